"""Training: the fit loop, losses and optimizers, exact metrics, and train()."""
from .distributed import all_reduce_sum, is_main, world
from ..errors import TrainingInterrupted
from .callbacks import Callback, EpochStats, FitResult, TrainState
from .loop import fit
from .metrics import EvalResult, evaluate, predict_logits
from ..tasks import make_loss
from .optim import make_optimizer
from .run import TrainResult, prepare_data, resolve_device, train

__all__ = ["all_reduce_sum", "is_main", "world", "Callback", "EpochStats", "FitResult",
           "TrainingInterrupted", "TrainState", "fit", "EvalResult", "evaluate", "predict_logits",
           "make_loss", "make_optimizer", "TrainResult", "prepare_data", "resolve_device", "train"]
