"""The embedded offline world: procedural indoor rooms rendered into ScanNet's layout.

``shapes`` builds each class as a parametric shape from parts, ``room`` lays a room out without
interpenetration, ``materials`` shades surfaces, ``render`` ray-casts RGB-D frames with Embree
(through trimesh), and ``generate`` writes scenes and splits in the canonical layout (``scene.py``).
"""
