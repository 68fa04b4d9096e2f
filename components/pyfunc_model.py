"""The MLflow pyfunc face of a MetaAdapt model, logged as *models-from-code*.

Why from code: MLflow 3 refuses to unpickle cloudpickled python models by default, and a pickle would tie the
registry to this exact class layout. Logged from code, the registry stores this file plus the model directory
(safetensors + checksummed manifest) as the ``model_dir`` artifact, and loading re-runs this file and then
``load_context``. Importing the file does no work beyond defining the class (MLflow executes it once at logging
time too): torch, transformers and the encoder load only in ``load_context``.

``predict`` takes a DataFrame with a ``text`` column (or a list/Series/array of strings) and returns a DataFrame
with ``label``, ``score`` (the top probability) and one ``p_<label>`` column per label.
"""
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

TEXT_COLUMN = "text"


def texts_from_input(model_input: Any) -> tuple[list[Any], pd.Index | None]:
    """The texts to score and the index to keep, so output rows line up with the caller's rows."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            found = [str(c) for c in model_input.columns]
            raise ValueError(f"input DataFrame needs a {TEXT_COLUMN!r} column; found columns {found}")
        return model_input[TEXT_COLUMN].tolist(), model_input.index
    if isinstance(model_input, pd.Series):
        return model_input.tolist(), model_input.index
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, (list, tuple)):
        return list(model_input), None
    if hasattr(model_input, "ndim") and getattr(model_input, "ndim") == 1:   # numpy array of strings
        return list(model_input), None
    raise TypeError(f"expected a DataFrame with a {TEXT_COLUMN!r} column, a Series or a list of strings; "
                    f"got {type(model_input).__name__}")


def predictions_frame(labels: list[str], probabilities: Any, index: pd.Index | None = None) -> pd.DataFrame:
    """label / score / p_<label> columns from a (rows, labels) probability matrix."""
    frame = pd.DataFrame({f"p_{label}": probabilities[:, i] for i, label in enumerate(labels)}, index=index)
    frame.insert(0, "label", [labels[i] for i in probabilities.argmax(axis=1)])
    frame.insert(1, "score", probabilities.max(axis=1))
    return frame


class MetaAdaptPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the verified model directory once per process and scores texts on the CPU."""

    def __init__(self) -> None:
        self.predictor = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here so that executing this file (MLflow does so at logging time) stays cheap.
        from components.predictor import Predictor

        self.predictor = Predictor.from_directory(context.artifacts["model_dir"], device="cpu")

    # MLflow 3 reads predict()'s type hints: pd.DataFrame is one it uses for neither validation nor signature
    # inference (a list[...] hint would reject DataFrames; no hint warns at every load). Series and lists of
    # strings are accepted too.
    def predict(self, context: mlflow.pyfunc.PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.predictor is None:
            raise RuntimeError("MetaAdaptPyfunc.predict called before load_context")
        texts, index = texts_from_input(model_input)
        probabilities = self.predictor.predict_proba(texts)
        return predictions_frame(self.predictor.labels, probabilities, index)


mlflow.models.set_model(MetaAdaptPyfunc())
