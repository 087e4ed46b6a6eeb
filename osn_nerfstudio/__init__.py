"""osn-nerfstudio: OSN as a nerfstudio method.

Kept free of submodule imports: nerfstudio loads this package's entry points from every ns-* command.
"""

__version__ = "0.1.0"
