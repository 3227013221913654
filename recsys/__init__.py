"""Test-time scaling for CTR prediction on TorchRec."""
