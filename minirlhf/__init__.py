"""minirlhf: the RLHF pipeline in plain NumPy, small enough to read and run on a laptop."""

# --- the engine, the GPT, generation and log-probs (issues 2, 3)
from minirlhf.autograd import Tensor, no_grad
from minirlhf.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.sampling import ModelPolicy, Rollout, generate, sequence_logprobs

# --- tokenizers, the one batch encoding, and the toy world (issues 3, 4)
from minirlhf.tokenizer import CharTokenizer, WordTokenizer, load_tokenizer
from minirlhf.data import collate, encode_pair, encode_prompt
from minirlhf.tasks import Task, get_task
from minirlhf.annotators import MARGIN_TABLE, Annotator, Harmlessness, collect_comparisons
from minirlhf.metrics import (agreement, bleu, distinct_n, evaluate, kl_estimates, rouge_l, rouge_n,
                              win_rate)

# --- run directories and the stages (issues 5–10)
from minirlhf.runs import load_run
from minirlhf.reward import RewardConfig, bradley_terry_loss
from minirlhf.rollout import Experience, collect_rollouts
from minirlhf.ppo import (AdaptiveKLController, PPOConfig, compute_gae, kl_penalized_rewards, ppo_policy_loss,
                          ppo_value_loss)
from minirlhf.dpo import DPOConfig, dpo_loss
from minirlhf.best_of_n import BestOfN, kl_bound
from minirlhf.rlaif import RLAIFConfig, ai_preferences
from minirlhf.safe_rlhf import (CostModelConfig, SafeRLHFConfig, cost_model_loss, lagrangian_advantages,
                                update_log_lambda)
from minirlhf.pairwise_ppo import PairwisePPOConfig, p3o_loss, pair_differences

# --- the way out to PyTorch (issue 11)
from minirlhf.export import export_hf

# --- be the human: label comparisons yourself (issue 12)
from minirlhf.annotate import AnnotateConfig, label_pairs
