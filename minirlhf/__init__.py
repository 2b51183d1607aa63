"""minirlhf: the RLHF pipeline in plain NumPy, small enough to read and run on a laptop."""

# --- tokenizers and the one batch encoding (issues 3, 4)
from minirlhf.tokenizer import CharTokenizer, WordTokenizer, load_tokenizer  # noqa: E402
from minirlhf.data import collate, encode_pair, encode_prompt  # noqa: E402
