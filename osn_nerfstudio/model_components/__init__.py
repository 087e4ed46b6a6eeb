"""Parts the OSN model wires together (samplers), in the manner of nerfstudio's model_components."""
