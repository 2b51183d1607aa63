"""minirlhf: the RLHF pipeline in plain NumPy, small enough to read and run on a laptop.

The package's folders are its layers, read in this order: engine → lm → world → stages →
variants → app (README, "Files"). These are the names most readers reach for; everything else is
imported from its module, e.g. `from minirlhf.stages.ppo import ppo_update`.
"""
# isort: skip_file

# --- the engine: tensors with gradients
from minirlhf.engine.autograd import Tensor, no_grad
from minirlhf.engine.kernels import tune_allocator

# --- the language model: tokenizers, the one batch layout, the GPT, log-probs, generation
from minirlhf.lm.tokenizer import CharTokenizer, WordTokenizer, load_tokenizer
from minirlhf.lm.data import collate, encode_pair, encode_prompt
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.lm.sampling import ModelPolicy, Rollout, generate

# --- the toy world: tasks with a hidden gold judge, simulated annotators, metrics
from minirlhf.world.tasks import Task, get_task
from minirlhf.world.annotators import MARGIN_TABLE, Annotator, Harmlessness, collect_comparisons
from minirlhf.world.metrics import (agreement, bleu, distinct_n, evaluate, kl_estimates, pass_at_k, rouge_l, rouge_n,
                                    win_rate)

# --- the stages of the 2022 recipe, and the run directories they write
from minirlhf.stages.runs import load_run
from minirlhf.stages.reward import RewardConfig, bradley_terry_loss
from minirlhf.stages.experience import Experience, collect_rollouts
from minirlhf.stages.ppo import (AdaptiveKLController, PPOConfig, compute_gae, kl_penalized_rewards, ppo_policy_loss,
                                 ppo_value_loss)
from minirlhf.stages.dpo import DPOConfig, dpo_loss
from minirlhf.stages.best_of_n import BestOfN, kl_bound

# --- the variants that followed
from minirlhf.variants.rlaif import RLAIFConfig, ai_preferences
from minirlhf.variants.safe_rlhf import (CostModelConfig, SafeRLHFConfig, cost_model_loss, lagrangian_advantages,
                                         update_log_lambda)
from minirlhf.variants.pairwise_ppo import PairwisePPOConfig, p3o_loss, pair_differences
from minirlhf.variants.grpo import group_advantages, grpo_loss, kl_in_reward, kl_penalty

# --- the app: the cache of tiny trained runs, the way out to PyTorch, labelling by hand
from minirlhf.app.pipeline import quick_run
from minirlhf.app.export import export_hf
from minirlhf.app.annotate import AnnotateConfig, label_pairs
