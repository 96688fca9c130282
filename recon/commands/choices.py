"""Choices the CLI lists in --help, copied from the registries so `recon --help` does not
import the data stage (torch): ``recon.data.splits.PROTOCOLS`` and ``recon.data.FORMATS``.
tests/test_cli.py checks the copies against the registries."""

PROTOCOLS = ("auto", "llff", "dtu", "blender8", "spare", "farthest")
FORMATS = ("synthetic", "blender", "nerfstudio", "dtu", "llff", "spare", "colmap", "images")
