"""Every deployment of MetaAdapt, declared once and served by one command (`metaadapt serve`).

| deployment | flow | started by |
|---|---|---|
| `scheduled-retraining` | metaadapt-pipeline | cron `orchestration.retrain_cron` |
| `adapt-on-new-batch` | metaadapt-adapt-domain | event `metaadapt.batch.accepted` (resource `metaadapt.domain.<d>`) |
| `drift-monitor` | metaadapt-monitor | cron `orchestration.monitor_cron` |
| `drift-response` | metaadapt-drift-response | event `metaadapt.drift.detected` |
| `watch-incoming` | metaadapt-watch-incoming | every `orchestration.watch_seconds` |

The event-triggered deployments take the domain from the event's resource label, so a new domain needs no new
deployment: add it to params.yaml and drop its data in `data/incoming/<domain>/`.
"""
from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from prefect.events import DeploymentEventTrigger

from components.config import PROJECT_ROOT, Params, load_params
from flows.orchestration import BATCH_ACCEPTED, DOMAIN_RESOURCE_LABEL, DRIFT_DETECTED

DOMAIN_FROM_EVENT = "{{ event.resource['" + DOMAIN_RESOURCE_LABEL + "'] }}"


def domain_trigger(event: str, parameters: dict) -> DeploymentEventTrigger:
    """One run per matching event, for any domain's resource."""
    return DeploymentEventTrigger(expect={event}, match={"prefect.resource.id": "metaadapt.domain.*"},
                                  parameters={"domain": DOMAIN_FROM_EVENT, **parameters})


def build_deployments(params: Params, root: Path, **options) -> list:
    """The RunnerDeployments `serve` registers (also what the tests serve); `options` go to every
    `to_deployment` (`deploy_to_pool` passes the module-path entrypoint a work pool's workers import)."""
    from flows.adaptation import adapt_domain
    from flows.incoming import watch_incoming
    from flows.monitor import monitor, respond_to_drift
    from flows.pipeline import pipeline

    schedule = params.orchestration
    where = {"root": str(root)}
    return [
        pipeline.to_deployment(name="scheduled-retraining", cron=schedule.retrain_cron,
                               parameters={**where, "trigger": "schedule"}, **options,
                               description="Full retraining: every DVC stage of every domain (DVC skips the fresh)."),
        adapt_domain.to_deployment(
            name="adapt-on-new-batch", **options, description="Adapt one domain when a labelled batch is accepted.",
            triggers=[domain_trigger(BATCH_ACCEPTED, {**where, "trigger": "new_batch",
                                                      "reason": "new batch {{ event.payload.source }} "
                                                                "({{ event.payload.rows }} rows)"})]),
        monitor.to_deployment(name="drift-monitor", cron=schedule.monitor_cron, parameters=where, **options,
                              description="Drift of the newest traffic batch per domain; emits drift events."),
        respond_to_drift.to_deployment(
            name="drift-response", **options,
            description="Adapt on drift when labelled data waits, else publish an alert.",
            triggers=[domain_trigger(DRIFT_DETECTED, {**where, "reasons_text": "{{ event.payload.reasons_text }}",
                                                      "report": "{{ event.payload.report }}"})]),
        watch_incoming.to_deployment(name="watch-incoming", interval=timedelta(seconds=schedule.watch_seconds),
                                     parameters=where, **options,
                                     description="Pick up labelled files in data/incoming/<domain>/."),
    ]


def serve_all(root: Path = PROJECT_ROOT, limit: int | None = None) -> None:
    """Register every deployment with the Prefect API and run their flows here until interrupted."""
    from prefect import serve

    params = load_params(root / "params.yaml")
    serve(*build_deployments(params, root), limit=limit)


def deploy_to_pool(pool: str, root: Path = PROJECT_ROOT) -> list[str]:
    """The same deployments (schedules, event triggers, parameters) registered on a Prefect *process work pool*
    instead of served here: any number of `prefect worker start --pool <pool>` processes, on this machine or
    others with the same checkout and environment, then pick their runs. The pool is created when missing. The
    flows are referenced by module path (`flows.pipeline.pipeline`), so a worker imports them from its own
    installed environment; no image, no code upload. Returns the deployment ids."""
    from prefect import deploy
    from prefect.deployments.runner import EntrypointType

    ensure_process_pool(pool)
    params = load_params(root / "params.yaml")
    deployments = build_deployments(params, root, entrypoint_type=EntrypointType.MODULE_PATH)
    return [str(i) for i in deploy(*deployments, work_pool_name=pool, print_next_steps_message=False,
                                   ignore_warnings=True)]


def ensure_process_pool(pool: str) -> None:
    """Create the process work pool `pool` unless it exists (what `prefect work-pool create --type process` does)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.deployments [--root DIR]` (what `metaadapt serve` runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="project directory (params.yaml, dvc.yaml)")
    parser.add_argument("--limit", type=int, default=None, help="most flow runs at once in this process")
    args = parser.parse_args(argv)
    serve_all(args.root.resolve(), args.limit)


if __name__ == "__main__":
    from flows.env import configure_environment

    configure_environment()
    main()
