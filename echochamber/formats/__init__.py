"""The output formats of the Echo Chamber study: the registry of tracked formats (registry.py, declared
in the vocabulary of rules.py, built-ins in echochamber/configs/formats/), the text primitives and
the paper's own rule (classify.py), and the world's renderers (render.py).

A run's format names come from its registry (`Registry.names`, recorded in its config.yaml and
results.json); nothing else lists them.
"""

# The labels of the paper's own rule (echochamber.formats.classify.paper_format), recorded beside
# ours so that shares can be held against the paper's figures. It has no `other`: whatever is not
# code is text (omi2) there, degenerate text included.
PAPER_FORMATS = ("tinygsm", "omi1", "omi2")
