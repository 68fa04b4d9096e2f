"""The MLflow pyfunc face of a MetaAdapt model, logged as *models-from-code*.

Why from code: MLflow 3 refuses to unpickle cloudpickled python models by default, and a pickle would tie the
registry to this exact class layout. Logged from code, the registry stores this file plus the model directory
(safetensors + checksummed manifest) as the ``model_dir`` artifact, and loading re-runs this file and then
``load_context``. Importing the file does no work beyond defining the class (MLflow executes it once at logging
time too): torch, transformers and the encoder load only in ``load_context``.

``predict`` takes a DataFrame with a ``text`` column (or a list/Series/array of strings) and returns a DataFrame
with one row per input row (same index, same order): ``label``, ``score`` (the top probability), one
``p_<label>`` column per label, and ``error``.

Contract for bad rows: a row whose text cannot be scored (missing, not a string, bytes, a string holding a lone
surrogate = undecodable input, empty or whitespace-only) is *not* predicted and does not fail the request: its
``error`` says why (e.g. ``"row 7: empty text"``), its ``label`` is ``""`` and its scores are NaN. Every other
row is scored normally with ``error == ""``. Callers should check ``error`` (or ``label != ""``) per row.

Every registered version carries a signature (input: a ``text`` string column; output: the columns above) and an
input example (components.registry.model_signature). MLflow checks a request against it before ``predict``: a
payload without a ``text`` column is answered by ``mlflow models serve`` with HTTP 400, ``INVALID_PARAMETER_VALUE``
and "Model is missing inputs ['text']. Note that there were extra inputs: [...]", no stack trace. A loaded
registered model therefore takes a DataFrame with a ``text`` column; this class itself (``predict`` called directly)
also takes a Series or a list of strings, and refuses any other input with a ``PyfuncInputError`` (an
MlflowException, code INVALID_PARAMETER_VALUE) naming the expected column and the columns found.
"""
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

TEXT_COLUMN = "text"


class PyfuncInputError(MlflowException, ValueError, TypeError):
    """The input as a whole is unusable (no ``text`` column, unsupported type): INVALID_PARAMETER_VALUE, so
    ``mlflow models serve`` answers 400 with this short message. Also a ValueError/TypeError for older callers."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def texts_from_input(model_input: Any) -> tuple[list[Any], pd.Index | None]:
    """The texts to score and the index to keep, so output rows line up with the caller's rows."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            found = [str(c)[:100] for c in model_input.columns[:20]]
            more = f" and {len(model_input.columns) - 20} more" if len(model_input.columns) > 20 else ""
            raise PyfuncInputError(
                f"input needs a {TEXT_COLUMN!r} column; found columns {found}{more}")
        return model_input[TEXT_COLUMN].tolist(), model_input.index
    if isinstance(model_input, pd.Series):
        return model_input.tolist(), model_input.index
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, (list, tuple)):
        return list(model_input), None
    if hasattr(model_input, "ndim") and getattr(model_input, "ndim") == 1:   # numpy array of strings
        return list(model_input), None
    raise PyfuncInputError(
        f"expected a DataFrame with a {TEXT_COLUMN!r} column, a Series or a list of strings; "
        f"got {type(model_input).__name__}")


def predictions_frame(labels: list[str], probabilities: Any, index: pd.Index | None = None,
                      errors: list[str] | None = None) -> pd.DataFrame:
    """label / score / p_<label> / error columns from a (rows, labels) probability matrix.

    A row with an error (``errors[i]`` not empty) has label ``""`` and NaN scores, whatever its probabilities.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    errors = [""] * len(probabilities) if errors is None else list(errors)
    bad = np.array([bool(e) for e in errors], dtype=bool)
    probabilities = probabilities.copy()
    probabilities[bad] = np.nan
    frame = pd.DataFrame({f"p_{label}": probabilities[:, i] for i, label in enumerate(labels)}, index=index)
    best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
    frame.insert(0, "label", ["" if b else labels[i] for i, b in zip(best, bad)])
    frame.insert(1, "score", probabilities.max(axis=1))     # NaN for the error rows
    frame["error"] = errors
    return frame


def row_errors(texts: list[Any]) -> list[str]:
    """Per row, "" when the text can be scored, else ``"row <i>: <reason>"`` (i = 0-based position)."""
    from components.safety import text_problem

    errors = []
    for i, text in enumerate(texts):
        problem = text_problem(text)
        errors.append("" if problem is None else f"row {i}: {problem}")
    return errors


class MetaAdaptPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the verified model directory once per process and scores texts on the CPU."""

    def __init__(self) -> None:
        self.predictor = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here so that executing this file (MLflow does so at logging time) stays cheap.
        from components.ner_model import is_entity_model
        from components.predictor import Predictor

        if is_entity_model(context.artifacts["model_dir"]):   # task: entities -> spans (components.ner_predictor)
            from components.ner_predictor import EntityPredictor

            self.predictor = EntityPredictor.from_directory(context.artifacts["model_dir"], device="cpu")
            return
        self.predictor = Predictor.from_directory(context.artifacts["model_dir"], device="cpu")

    # MLflow 3 reads predict()'s type hints: pd.DataFrame is one it uses for neither validation nor signature
    # inference (a list[...] hint would reject DataFrames; no hint warns at every load). Series and lists of
    # strings are accepted too.
    def predict(self, context: mlflow.pyfunc.PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.predictor is None:
            raise RuntimeError("MetaAdaptPyfunc.predict called before load_context")
        if not hasattr(self.predictor, "predict_proba"):   # an entity model: one row of spans per input
            from components.ner_predictor import entities_frame

            return entities_frame(self.predictor, model_input)
        texts, index = texts_from_input(model_input)
        errors = row_errors(texts)
        labels = self.predictor.labels
        probabilities = np.full((len(texts), len(labels)), np.nan)
        good = [i for i, error in enumerate(errors) if not error]
        if good:
            probabilities[good] = self.predictor.predict_proba([texts[i] for i in good])
        return predictions_frame(labels, probabilities, index, errors)


mlflow.models.set_model(MetaAdaptPyfunc())
