"""A ticket leaves the lab: `raytickets export` (`cli.py`) writes a stored ticket as a Hugging Face model
(`write.py`; shrunk when structured: `shrink.py`), an ONNX model or a mask file, with a model card (`card.py`).
`select.py` finds the ticket, `model.py` rebuilds and measures it."""

from .model import OnnxModel, load_shrunk, max_logit_gap, write_onnx  # noqa: F401  (the export API)
