"""``tailor bench clusterers``: which River clusterer segments simulated shoppers best.

Every candidate sees the same stream the flow's audience step sees (batches of
simulated events -> per-user behaviour vectors -> a River StandardScaler ->
the clusterer, one ``learn_one`` per updated user) and is then asked for each
user's cluster from the user's latest vector. Quality is the adjusted Rand
index against the simulator's latent profiles (users with at least two
visits); cost is microseconds per update (scaler + learn + predict).
"""

from __future__ import annotations

import json
import sys
import time

from tqdm import tqdm

from config.settings import Settings
from engine.audience.segments import (
    FEATURE_NAMES,
    Behaviour,
    SegmentModel,
    TrafficPriors,
    _model_space,
    adjusted_rand_index,
    feature_vector,
)
from jobs.simulator import Simulator


def candidates(k: int) -> dict:
    """River clusterers with settings tuned for this stream (standard-scaled, 6 features)."""
    from river import cluster

    return {
        "KMeans (Tailor: warm-up fit, then online)": None,  # SegmentModel itself
        "KMeans (online only)": cluster.KMeans(n_clusters=k, halflife=0.05, sigma=1, seed=1),
        "STREAMKMeans": cluster.STREAMKMeans(chunk_size=500, n_clusters=k, halflife=0.05, sigma=1, seed=1),
        "CluStream": cluster.CluStream(n_macro_clusters=k, max_micro_clusters=40, time_window=2000, seed=1),
        "DBSTREAM": cluster.DBSTREAM(
            clustering_threshold=1.5, fading_factor=0.01, cleanup_interval=2, intersection_factor=0.3, minimum_weight=1
        ),
    }


def run_clusterers(settings: Settings, args) -> int:
    from river import preprocessing

    k = settings.audience.segments or 4
    sim = Simulator(users=args.users, seed=7)
    models = {}
    for name, clusterer in candidates(k).items():
        if clusterer is None:
            models[name] = [SegmentModel(k, warmup=settings.audience.warmup), None, 0.0, 0]
        else:
            models[name] = [clusterer, preprocessing.StandardScaler(), 0.0, 0]
    behaviours: dict[str, Behaviour] = {}
    priors = TrafficPriors()
    latest: dict[str, dict[str, float]] = {}
    batch: dict[str, list] = {}
    events = tqdm(
        sim.events(args.events), total=args.events, desc="simulated stream", unit="ev", file=sys.stderr, mininterval=0.5
    )
    for n, event in enumerate(events, 1):
        batch.setdefault(event.user_id, []).append(event)
        if n % settings.kafka.batch_size and n != args.events:
            continue
        evidence = {}
        for user_id, user_events in batch.items():
            b = behaviours.get(user_id) or behaviours.setdefault(
                user_id,
                settings.audience.new_behaviour(),
            )
            b.update_many(user_events)
            if b.visits_total >= settings.audience.min_sessions:
                evidence[user_id] = b.evidence()
        priors.observe(list(evidence.values()))  # as the audience step does: priors from the traffic itself
        prior = priors.values()
        for user_id, e in evidence.items():
            vector = feature_vector(e, prior)[0]
            latest[user_id] = vector
            for model in models.values():
                started = time.perf_counter()
                if model[1] is None:
                    model[0].learn(vector, user_id)
                else:
                    x = _model_space(vector)
                    model[1].learn_one(x)
                    scaled = model[1].transform_one(x)
                    model[0].learn_one(scaled)
                    model[0].predict_one(scaled)
                model[2] += time.perf_counter() - started
                model[3] += 1
        for model in models.values():
            if model[1] is None:  # as the audience step does after each batch (its cost counts too)
                started = time.perf_counter()
                if model[0].consolidate():
                    model[0].refit()
                model[2] += time.perf_counter() - started
        batch.clear()
    users = sorted(latest)
    truth = [sim.profile_of(u) for u in users]
    results = {}
    for name, (clusterer, scaler, seconds, updates) in models.items():
        if scaler is None:
            predicted = [clusterer.assign(latest[u])[0] for u in users]
        else:
            predicted = [clusterer.predict_one(scaler.transform_one(_model_space(latest[u]))) for u in users]
        results[name] = {
            "ari": round(adjusted_rand_index(truth, predicted), 3),
            "clusters_used": len(set(predicted)),
            "us_per_update": round(seconds / max(updates, 1) * 1e6, 1),
        }
    print(
        json.dumps(
            {
                "bench": "clusterers",
                "events": args.events,
                "users": args.users,
                "segments": k,
                "features": list(FEATURE_NAMES),
                "updates": models[next(iter(models))][3],
                "results": results,
            }
        )
    )
    return 0
