"""The frozen CLIP of Text4Point (open_clip): loading, the offline bootstrap model, dense features.

* ``load``: ``load_clip(clip_cfg, device, checkpoint)`` -> ``ClipHandle`` (model, preprocess, tokenizer, identity).
* ``bootstrap``: the ``clip_bootstrap`` stage, which trains the small offline model (``t4p-tiny``) on the
  ``clip`` split's object crops.
* ``features``: ``dense_features``, ``text_embeddings`` and the ``clip_features`` stage (cached per scene).

``model_configs/`` holds the project's open_clip model configs; importing ``load`` registers them.
"""
