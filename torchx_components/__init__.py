"""TorchX components of this project (``torchx run -s <scheduler> torchx_components/recsys.py:<name>``)."""
