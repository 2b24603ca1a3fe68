"""echochamber: pretrain small LMs on a declared math mixture, RL-fine-tune them, watch formats move."""

__version__ = "0.1.0"
