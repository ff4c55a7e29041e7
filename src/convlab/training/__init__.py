"""Training: the one pipeline (data and split, model, fit, test evaluation, run folder),
the fit loop and its callbacks, optimizers, exact metrics, and train()."""
from ..errors import TrainingInterrupted
from ..tasks import make_loss
from .callbacks import Callback, EpochStats, FitResult, TrainState
from .distributed import all_reduce_sum, is_main, world
from .loop import fit
from .metrics import EvalResult, evaluate, predict_logits
from .optim import make_optimizer
from .run import TrainResult, prepare_data, prepare_run_dir, resolve_device, train

__all__ = ["all_reduce_sum", "is_main", "world", "Callback", "EpochStats", "FitResult",
           "TrainingInterrupted", "TrainState", "fit", "EvalResult", "evaluate", "predict_logits",
           "make_loss", "make_optimizer", "TrainResult", "prepare_data", "prepare_run_dir",
           "resolve_device", "train"]
