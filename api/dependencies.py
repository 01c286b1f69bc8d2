"""The routes' `Provide` dependencies: what a handler takes from the app's state, by name and type.

The lifespan (`api.app.create_app`) opens the resources and puts them on
``app.state``; a controller declares the ones its handlers take
(``dependencies = {"templates": provide(live_templates)}``) and a handler names them
as parameters (``templates: NamedDependency[LiveTemplates]``), instead of digging
``request.app.state`` out by hand. Each is a
plain accessor run on the event loop (``sync_to_thread=False``): no I/O, microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.datastructures import State
from litestar.di import Provide

from store.catalog import LiveCatalog
from store.experiments import ExperimentStore, LiveExperiments
from store.templates import LiveTemplates


def provide(accessor: Callable[[State], Any]) -> Provide:
    """``accessor`` as a dependency, called on the event loop (it only reads the state)."""
    return Provide(accessor, sync_to_thread=False)


def live_templates(state: State) -> LiveTemplates:
    """The templates being served, over their store (``.store``)."""
    return state.templates


def live_catalog(state: State) -> LiveCatalog:
    """The item catalog, over its store (``.store``), with the shelves personalize picks from."""
    return state.catalog


def live_experiments(state: State) -> LiveExperiments:
    """The running experiments, with the bandits' weights."""
    return state.experiments


def experiment_store(state: State) -> ExperimentStore:
    """Every experiment, running or not."""
    return state.experiment_store


def feature_store(state: State) -> Any:
    """The Feast store (``feast.FeatureStore``; not imported here, so that importing the routes stays light)."""
    return state.store


def model_versions(state: State) -> Callable[[], set[str]]:
    """The copy model versions this process can serve (`api.personalize.CopyWriter.model_versions`)."""
    return state.writer.model_versions
