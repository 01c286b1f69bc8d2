"""The ``/v1/experiments`` routes: define, start, stop, reallocate and read experiments on content.

The experiments themselves, their SQLite and Redis stores and the running ones
the personalize path assigns users to are `store.experiments`; the results page
(rates with intervals, tests against the control, Bayesian and sequential
read-outs, the sample-ratio check, guardrails and factorial effects) is
`engine.experiments.results`, from the flow's counters (`store.experiments.read_counters`).
Every change (create, start, stop, a new allocation) is recorded in the audit log (`api.audit`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.audit import Auditor, provide_auditor
from api.dependencies import experiment_store, feature_store, live_experiments, live_templates, model_versions, provide
from api.http import StrictBody, error_responses, http_errors
from engine.experiments.designs import ExperimentSpec, VariantName, check_spec
from engine.experiments.results import Results, results
from store.experiments import ExperimentError, ExperimentStore, LiveExperiments, read_counters
from store.records import now_iso
from store.templates import LiveTemplates

#: The error answers an experiment route gives, for its OpenAPI ``responses``.
_errors = partial(
    error_responses,
    {
        400: "the body is malformed: not JSON, wrong types or unknown fields",
        404: "there is no such experiment",
        409: "the experiment's state does not allow it (the reason says why)",
        422: "the design is invalid (the reason says why)",
    },
)
#: Store and validation errors as HTTP answers whose ``detail`` says what to do.
_STATUSES: dict[type[Exception], int | None] = {ExperimentError: None, ValueError: 422}


def _missing(experiment_id: str) -> ExperimentError:
    return ExperimentError(f"there is no experiment {experiment_id!r}: GET /v1/experiments lists them", 404)


class AllocationPatch(StrictBody):
    """A new allocation: weights by arm name (others keep theirs) and/or the holdout share.

    Users already assigned keep their arm unless their arm's weight fell or another grew
    (see `engine.experiments.assignment`: the fewest users possible move).
    """

    weights: dict[VariantName, Annotated[float, msgspec.Meta(ge=0, le=1e6)]] = {}
    holdout: Annotated[float, msgspec.Meta(ge=0, lt=1)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


def _check_content(spec: ExperimentSpec, templates: LiveTemplates, model_versions: Callable[[], set[str]]) -> None:
    """Every pinned template exists for its slot, and every model version can be served."""
    for slot in spec.slots:
        variants = spec.factors[slot] if spec.factorial else spec.arms
        for v in variants:
            if v.template_id is not None:
                try:
                    template = templates.store.get(v.template_id, v.template_version)
                except LookupError:
                    version = f" version {v.template_version}" if v.template_version else ""
                    raise ValueError(
                        f"variant {v.name!r}: there is no template {v.template_id!r}{version}: "
                        "create it with POST /v1/templates first"
                    ) from None
                if template.slot != slot:
                    raise ValueError(
                        f"variant {v.name!r}: template {v.template_id!r} is for the {template.slot} slot, not {slot}"
                    )
            if v.model_version is not None and v.model_version not in model_versions():
                raise ValueError(
                    f"variant {v.name!r}: copy model version {v.model_version!r} is not being served "
                    f"nor in the model registry (known: {sorted(model_versions())})"
                )


class ExperimentController(Controller):
    """Experiments on content: A/B/n and factorial, with holdouts, targeting and guardrails."""

    path = "/v1/experiments"
    tags = ("experiments",)
    dependencies = {
        "experiment_store": provide(experiment_store),
        "experiments": provide(live_experiments),
        "templates": provide(live_templates),
        "model_versions": provide(model_versions),
        "feature_store": provide(feature_store),
        "auditor": provide_auditor,
    }

    @post(summary="Create an experiment", opt={"scope": "admin"}, sync_to_thread=True, responses=_errors(409, 422))
    def create_experiment(
        self,
        data: JSONBody[ExperimentSpec],
        experiment_store: NamedDependency[ExperimentStore],
        templates: NamedDependency[LiveTemplates],
        model_versions: NamedDependency[Callable[[], set[str]]],
        auditor: NamedDependency[Auditor],
    ) -> ExperimentSpec:
        """Define an experiment (status ``draft``; start it with POST /v1/experiments/{id}/start).

        A/B/n: ``slot`` and ``arms``. Factorial: ``factors`` (two or more slots, each with its levels).
        Each arm pins a template, serves default or generated copy, or names a copy model version.
        """
        spec = msgspec.structs.replace(data, status="draft", created=now_iso(), started="", stopped="", reallocated="")
        auditor.check()  # the audit log cannot be written: 503, nothing created (api.audit)
        with http_errors(_STATUSES):
            check_spec(spec)
            _check_content(spec, templates, model_versions)

            def make(current: ExperimentSpec | None) -> ExperimentSpec:
                if current is not None:
                    raise ExperimentError(f"experiment {spec.id!r} exists already: pick another id", 409)
                return spec

            created = experiment_store.update(spec.id, make)
        auditor.record("experiment.create", created.id, {"slots": list(created.slots), "status": created.status})
        return created

    @get(summary="List experiments", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors())
    def list_experiments(
        self,
        experiment_store: NamedDependency[ExperimentStore],
        status: Literal["draft", "running", "stopped"] | None = None,
    ) -> list[ExperimentSpec]:
        """Every experiment, by id (``?status=running`` for the live ones)."""
        return [s for s in experiment_store.all() if status is None or s.status == status]

    @get(
        "/{experiment_id:str}",
        summary="Read an experiment",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def get_experiment(
        self, experiment_store: NamedDependency[ExperimentStore], experiment_id: FromPath[str]
    ) -> ExperimentSpec:
        """One experiment's definition and status."""
        with http_errors(_STATUSES):
            return _get(experiment_store, experiment_id)

    @post(
        "/{experiment_id:str}/start",
        summary="Start an experiment",
        opt={"scope": "admin"},
        sync_to_thread=True,
        status_code=200,
        responses=_errors(404, 409, 422),
    )
    def start_experiment(
        self,
        experiment_id: FromPath[str],
        experiment_store: NamedDependency[ExperimentStore],
        experiments: NamedDependency[LiveExperiments],
        templates: NamedDependency[LiveTemplates],
        model_versions: NamedDependency[Callable[[], set[str]]],
        auditor: NamedDependency[Auditor],
    ) -> ExperimentSpec:
        """Start assigning users. Refused (409) if another running experiment uses one of its slots."""

        def start(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status != "draft":
                raise ExperimentError(
                    f"experiment {spec.id!r} is {spec.status}: only a draft can start (to run it "
                    "again, create a new experiment: a new id reshuffles users)",
                    409,
                )
            _check_content(spec, templates, model_versions)
            for other in experiment_store.all():
                clash = set(other.slots) & set(spec.slots)
                if other.status == "running" and clash:
                    raise ExperimentError(
                        f"experiment {other.id!r} is running on {sorted(clash)}: stop it first "
                        "(one experiment per slot keeps their results apart)",
                        409,
                    )
            return msgspec.structs.replace(spec, status="running", started=now_iso())

        auditor.check()
        started = _transition(experiment_store, experiments, experiment_id, start)
        auditor.record("experiment.start", experiment_id, {"slots": list(started.slots), "started": started.started})
        return started

    @post(
        "/{experiment_id:str}/stop",
        summary="Stop an experiment",
        opt={"scope": "admin"},
        sync_to_thread=True,
        status_code=200,
        responses=_errors(404, 409),
    )
    def stop_experiment(
        self,
        experiment_id: FromPath[str],
        experiment_store: NamedDependency[ExperimentStore],
        experiments: NamedDependency[LiveExperiments],
        auditor: NamedDependency[Auditor],
    ) -> ExperimentSpec:
        """Stop assigning users: everyone gets normal content again. Results stay readable."""

        def stop(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status != "running":
                raise ExperimentError(f"experiment {spec.id!r} is {spec.status}, not running", 409)
            return msgspec.structs.replace(spec, status="stopped", stopped=now_iso())

        auditor.check()
        stopped = _transition(experiment_store, experiments, experiment_id, stop)
        auditor.record("experiment.stop", experiment_id, {"stopped": stopped.stopped})
        return stopped

    @patch(
        "/{experiment_id:str}",
        summary="Change an experiment's allocation",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(400, 404, 409, 422),
    )
    def update_allocation(
        self,
        experiment_id: FromPath[str],
        data: JSONBody[AllocationPatch],
        experiment_store: NamedDependency[ExperimentStore],
        experiments: NamedDependency[LiveExperiments],
        auditor: NamedDependency[Auditor],
    ) -> ExperimentSpec:
        """Change arm weights, the holdout share or the description (running or not)."""

        def change(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status == "stopped":
                raise ExperimentError(f"experiment {spec.id!r} is stopped", 409)
            if data.weights and spec.factorial:
                raise ValueError("a factorial experiment's levels are equally likely: it has no weights to change")
            if spec.allocation == "thompson" and any(w > 0 for w in data.weights.values()):
                raise ValueError(
                    "a Thompson experiment's weights follow its counters: a weight can only be set to "
                    "0 (the arm leaves the bandit)"
                )
            unknown = set(data.weights) - {a.name for a in spec.arms}
            if unknown:
                raise ValueError(f"no arms named {sorted(unknown)}: the arms are {[a.name for a in spec.arms]}")
            arms = [msgspec.structs.replace(a, weight=data.weights.get(a.name, a.weight)) for a in spec.arms]
            new = msgspec.structs.replace(
                spec,
                arms=arms,
                holdout=spec.holdout if data.holdout is None else data.holdout,
                description=spec.description if data.description is None else data.description,
            )
            if spec.status == "running" and (new.arms != spec.arms or new.holdout != spec.holdout):
                new = msgspec.structs.replace(new, reallocated=now_iso())  # users already assigned stay put
            return check_spec(new)

        auditor.check()
        changed = _transition(experiment_store, experiments, experiment_id, change)
        given = [name for name in ("weights", "holdout", "description") if getattr(data, name) not in (None, {})]
        auditor.record(
            "experiment.reallocate" if {"weights", "holdout"} & set(given) else "experiment.update",
            experiment_id,
            {
                "changed": given,
                "weights": {a.name: a.weight for a in changed.arms if a.name in data.weights},
                "holdout": changed.holdout,
                "status": changed.status,
            },
        )
        return changed

    @get(
        "/{experiment_id:str}/results",
        summary="An experiment's results",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def experiment_results(
        self,
        experiment_id: FromPath[str],
        experiment_store: NamedDependency[ExperimentStore],
        experiments: NamedDependency[LiveExperiments],
        feature_store: NamedDependency[Any],
    ) -> Results:
        """Per variant: users, rates with 95% intervals, tests against the control, chance to beat it,
        the always-valid sequential p-value, the sample-ratio check, guardrails and factorial effects."""
        with http_errors(_STATUSES):
            spec = _get(experiment_store, experiment_id)
        counters = read_counters(feature_store, spec)
        return results(spec, counters, experiments.weights.get(spec.id))


def _get(store: ExperimentStore, experiment_id: str) -> ExperimentSpec:
    spec = store.get(experiment_id)
    if spec is None:
        raise _missing(experiment_id)
    return spec


def _transition(
    store: ExperimentStore,
    experiments: LiveExperiments,
    experiment_id: str,
    change: Callable[[ExperimentSpec], ExperimentSpec],
) -> ExperimentSpec:
    """Store what ``change`` makes of the experiment, and serve it at once."""

    def make(current: ExperimentSpec | None) -> ExperimentSpec:
        if current is None:
            raise _missing(experiment_id)
        return change(current)

    with http_errors(_STATUSES):
        spec = store.update(experiment_id, make)
    experiments.refresh(force=True)
    return spec
