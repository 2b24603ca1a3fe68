"""The output-format taxonomy of the Echo Chamber study.

One home for the format names: world renderers (echochamber.formats.render), the classifier of
generations (echochamber.formats.classify), pretraining statistics, eval, RL metrics and the report
all use these names.
"""

# The labels a generation can receive. `other` covers everything else, degenerate text included.
FORMATS = ("tinygsm", "omi1", "omi2", "other")

# The labels of the paper's own rule (echochamber.formats.classify.paper_format), recorded beside
# ours so that shares can be held against the paper's figures. It has no `other`: whatever is not
# code is text (omi2) there, degenerate text included.
PAPER_FORMATS = ("tinygsm", "omi1", "omi2")
