"""Every rewinder behind one interface (:class:`Rewinder`), made by one factory (:func:`make_rewinder`)."""
from invwnn.rewind.factory import REWINDERS, USER_REWINDERS, checkpoint_kind, inspect, make_rewinder
from invwnn.rewind.meta import MetaRewinder
from invwnn.rewind.predictor import LearnedRewinder
from invwnn.rewind.rewinders import FullPrecision, LinearRewinder, NoRewinder, ResetRewinder, Rewinder
from invwnn.rewind.shipped import SHIPPED, shipped_path

__all__ = ["REWINDERS", "USER_REWINDERS", "SHIPPED", "Rewinder", "LinearRewinder", "NoRewinder", "ResetRewinder",
           "LearnedRewinder", "MetaRewinder", "FullPrecision", "make_rewinder", "checkpoint_kind", "inspect",
           "shipped_path"]
