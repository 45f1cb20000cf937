"""The framework-neutral core: numpy only, no torch or Keras import.

- :mod:`~symconv.core.validate`: the argument checks and their one message style;
- :mod:`~symconv.core.spec`: what a layer family's spec provides (parameters and their
  torch/Keras layouts, the settings twins share);
- :mod:`~symconv.core.conv`: a convolution's geometry, from torch or Keras arguments;
- :mod:`~symconv.core.symmetry`: the reflection-symmetry plan (one gather index);
- one spec module per layer family (:mod:`~symconv.core.symmetric_conv`, ...).

The torch layers (:mod:`symconv.nn`) and the Keras layers (:mod:`symconv.keras`) are thin
builders over these specs; :mod:`symconv.registry` pairs them.
"""
