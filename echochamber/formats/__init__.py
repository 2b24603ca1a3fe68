"""The output-format taxonomy of the Echo Chamber study.

One home for the format names: world renderers (echochamber.formats.render), the classifier of
generations (echochamber.formats.classify), pretraining statistics, eval, RL metrics and the report
all use these names.
"""

# The labels a generation can receive. `other` covers everything else, degenerate text included.
FORMATS = ("tinygsm", "omi1", "omi2", "other")
