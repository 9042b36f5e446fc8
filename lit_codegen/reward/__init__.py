"""Reward: sandboxed execution of candidate programs against APPS tests.

``Evaluator`` scores programs (the PPO reward and the validation metric); ``report`` turns results into
summaries (score bands, accuracy per difficulty); ``python -m lit_codegen.reward.code_eval`` is the CLI.
"""

from lit_codegen.reward.evaluator import VERDICTS, EvalResult, Evaluator
from lit_codegen.reward.report import SCORE_BANDS, score_band, score_bands, summarize

__all__ = ["VERDICTS", "SCORE_BANDS", "EvalResult", "Evaluator", "score_band", "score_bands", "summarize"]
