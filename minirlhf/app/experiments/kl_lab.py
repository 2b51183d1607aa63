"""The exact-KL lab: k1, k2 and k3 against the exact KL(π ‖ π_ref) and the exact gradients of both KLs.

    minirlhf experiment kl-lab [--quick] [--docs docs/results] [--seed 0] [--distance 0.2]

A tiny GPT over `--vocab` tokens that answers one prompt with exactly `--length` tokens has few
enough responses (4^5 = 1,024) to list them all (`minirlhf.variants.kl_lab`). π_ref is a random GPT, π the
same one with N(0, distance²) added to every matrix. Over the whole list the lab computes
KL(π ‖ π_ref), KL(π_ref ‖ π) and the exact gradient of each. Then, for each estimator k1, k2, k3
(`grpo.kl_penalty`, summed over a response's tokens), it measures:

  - its value from N samples, N = 1 … 1,024: the exact mean, bias and std (σ/√N) from the list,
    and how often the N-sample estimate is negative (`--value-draws` sample sets per N);
  - its gradient in the loss (GRPO's placement) and in the reward (the REINFORCE gradient),
    exactly in expectation (weights π), both per token as the libraries compute it and applied
    once to the whole sequence's log-ratio, and from N samples (`--trials` sample sets per N).
    Each is compared with the exact reverse-KL and forward-KL gradients by cosine similarity
    and relative error;
  - the expected gradients again for π at several distances from π_ref (the same noise, scaled).

Nothing is trained, so `--out` is not used. The lab writes kl_lab.png, kl_lab.json and kl_lab.md
into `--docs`. `--quick` lists the 27 responses of 3 tokens over 3, with few draws.
"""
import time

import numpy as np

from minirlhf.app.experiments import experiment_parser, write_results
from minirlhf.engine.autograd import no_grad
from minirlhf.variants.kl_lab import (cosine, enumerate_responses, estimator_gradient, estimator_values, exact_kl,
                                      flat_gradient, lab_batch, lab_models, positionwise_kl, relative_error,
                                      response_logprobs, sample_weights)

ESTIMATORS = ("k1", "k2", "k3")
PLACEMENTS = ("loss", "reward")
DISTANCES = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5)   # std of the noise between π_ref and π, for the sweep
TABLE_NS = (1, 4, 16, 64, 256, 1024)            # the sample sizes the Markdown tables show
EXACT = 1e-9                                    # a relative error below this is "equal, to rounding"


def main(argv=None):
    parser = experiment_parser("kl_lab", __doc__)
    parser.add_argument("--vocab", type=int, default=4, help="tokens in the vocabulary, V")
    parser.add_argument("--length", type=int, default=5, help="tokens in every response, L (V^L responses)")
    parser.add_argument("--distance", type=float, default=0.2, help="std of the noise that moves π away from π_ref")
    parser.add_argument("--trials", type=int, default=50, help="sample sets per N for the sampled gradients")
    parser.add_argument("--value-draws", type=int, default=2000, help="sample sets per N for the sampled values")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.length, args.trials, args.value_draws = 3, 3, 2, 100
    results = run(args.vocab, args.length, args.distance, args.trials, args.value_draws, args.seed, args.quick)
    write_results(args.docs, "kl_lab", results, plot, table(results))
    return results


def run(vocab, length, distance, trials, value_draws, seed=0, quick=False):
    """Every number of the lab, as a JSON-ready dict."""
    start = time.time()
    rng = np.random.default_rng([seed, 1])
    responses = enumerate_responses(vocab, length)                                # (V^L, L)
    ns = [int(n) for n in 2 ** np.arange(11)]                                     # 1 … 1,024
    numbers, lab = exact_study(*lab_models(vocab, length, seed, distance=distance), responses)
    results = {"seed": seed, "quick": quick, "vocab": vocab, "length": length, "responses": len(responses),
               "params": int(lab["targets"]["reverse"].size), "distance": distance, "trials": trials,
               "value_draws": value_draws, **numbers,
               "values": value_study(lab, ns, value_draws, rng),
               "sampled": gradient_study(lab, responses, ns, trials, rng),
               "sweep": [{"distance": d, **exact_study(*lab_models(vocab, length, seed, distance=d), responses)[0]}
                         for d in DISTANCES]}
    results["seconds"] = round(time.time() - start, 1)
    return results


def compare(g, targets):
    """How close gradient g is to the exact reverse- and forward-KL gradients."""
    return {"cos_reverse": cosine(g, targets["reverse"]), "relerr_reverse": relative_error(g, targets["reverse"]),
            "cos_forward": cosine(g, targets["forward"]), "relerr_forward": relative_error(g, targets["forward"]),
            "norm_ratio": float(np.linalg.norm(g) / np.linalg.norm(targets["reverse"]))}


def exact_study(ref, policy, responses):
    """Over the whole list: both KLs and their gradients, and each estimator's expected gradient.

    -> (numbers for the JSON, the arrays the sampled studies reuse)."""
    batch = lab_batch(responses)
    with no_grad():
        ref_logprobs = response_logprobs(ref, batch).data                           # (B, 1 + L)
    logprobs = response_logprobs(policy, batch)                                     # (B, 1 + L) Tensor
    probs = np.exp(logprobs.data.sum(axis=1))                                       # (B,) π(y), Σ = 1
    targets = {"reverse": flat_gradient(policy, exact_kl(logprobs, ref_logprobs)),
               "forward": flat_gradient(policy, exact_kl(ref_logprobs, logprobs))}
    expected, grads = [], {}
    for per in ("token", "sequence"):
        for placement in PLACEMENTS:
            for estimator in ESTIMATORS:
                g = estimator_gradient(policy, responses, ref_logprobs, probs, placement, estimator, per)
                grads[placement, estimator, per] = g
                expected.append({"placement": placement, "estimator": estimator, "per": per, **compare(g, targets)})
    # the per-token estimators' expected gradients: the position-wise token KLs, contexts frozen
    positionwise = {
        "k2_loss_vs_reverse": relative_error(grads["loss", "k2", "token"],
                                             flat_gradient(policy, positionwise_kl(policy, ref, batch, probs))),
        "k3_loss_vs_forward": relative_error(grads["loss", "k3", "token"],
                                             flat_gradient(policy, positionwise_kl(policy, ref, batch, probs, False)))}
    values = {e: estimator_values(logprobs.data, ref_logprobs, e) for e in ESTIMATORS}          # (B,) K(y)
    numbers = {"kl": float(exact_kl(logprobs.data, ref_logprobs).data),
               "value_std": {e: float(np.sqrt(probs @ (k - probs @ k) ** 2)) for e, k in values.items()},
               "forward_kl": float(exact_kl(ref_logprobs, logprobs.data).data),
               "cos_reverse_forward": cosine(targets["reverse"], targets["forward"]),
               "expected": expected, "positionwise": positionwise}
    return numbers, {"policy": policy, "probs": probs, "logprobs": logprobs.data, "ref_logprobs": ref_logprobs,
                     "targets": targets, "kl": numbers["kl"], "values": values, "value_std": numbers["value_std"]}


def value_study(lab, ns, draws, rng):
    """Each estimator's value K(y) = Σ_t k_t: exact moments over the list, and N-sample estimates."""
    probs, out = lab["probs"], {}
    for estimator in ESTIMATORS:
        k, std = lab["values"][estimator], lab["value_std"][estimator]               # (B,), σ of one sample
        mean = float(probs @ k)
        by_n = []
        for n in ns:
            means = k[rng.choice(len(k), size=(draws, n), p=probs)].mean(axis=1)      # (draws,) N-sample estimates
            by_n.append({"n": n, "std": float(std / np.sqrt(n)), "sampled_mean": float(means.mean()),
                         "sampled_std": float(means.std()), "p_negative": float(np.mean(means < 0))})
        out[estimator] = {"mean": mean, "bias": mean - lab["kl"], "std": std,
                          "p_negative": float(probs[k < 0].sum()), "by_n": by_n}
    return out


def gradient_study(lab, responses, ns, trials, rng):
    """{"placement-estimator": [{n, mean cos and relative error to both exact gradients}, …]}: the same
    sample sets for every estimator, per token."""
    out = {f"{p}-{e}": [] for p in PLACEMENTS for e in ESTIMATORS}
    for n in ns:
        rows = {key: [] for key in out}
        for _ in range(trials):
            weights = sample_weights(lab["probs"], n, rng)
            for key in out:
                placement, estimator = key.split("-")
                g = estimator_gradient(lab["policy"], responses, lab["ref_logprobs"], weights, placement, estimator)
                rows[key].append(compare(g, lab["targets"]))
        for key, row in rows.items():
            out[key].append({"n": n, **{m: float(np.mean([r[m] for r in row])) for m in row[0]}})
    return out


# ----------------------------------------------------------------------------- the plot and the tables

def plot(results, path):
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

    fig = Figure(figsize=(15, 8))
    axes = fig.subplots(2, 3).ravel()
    colors = dict(zip(ESTIMATORS, ("C0", "C1", "C2")))
    for estimator, v in results["values"].items():
        n = np.array([r["n"] for r in v["by_n"]])
        std = np.array([r["std"] for r in v["by_n"]])
        axes[0].plot(n, [r["sampled_mean"] for r in v["by_n"]], "o", ms=3, color=colors[estimator])
        axes[0].fill_between(n, v["mean"] - std, v["mean"] + std, alpha=0.2, color=colors[estimator],
                             label=f"{estimator}: E ± std of the N-sample mean")
        axes[1].plot(n, [r["p_negative"] for r in v["by_n"]], "o-", ms=3, color=colors[estimator], label=estimator)
    axes[0].axhline(results["kl"], color="k", ls="--", lw=1, label="exact KL(π‖π_ref)")
    axes[0].set(title="KL estimates from N samples (dots: sampled means)", ylabel="nats per response")
    axes[1].set(title="how often the N-sample estimate is < 0", ylabel="fraction of sample sets")
    for ax, metric, title in ((axes[2], "cos_reverse", "cos(ĝ_N, ∇KL(π‖π_ref))"),
                              (axes[3], "cos_forward", "cos(ĝ_N, ∇KL(π_ref‖π))"),
                              (axes[4], "relerr_reverse", "relative error ‖ĝ_N − ∇KL(π‖π_ref)‖ / ‖∇KL‖")):
        for key, rows in results["sampled"].items():
            placement, estimator = key.split("-")
            ax.plot([r["n"] for r in rows], [r[metric] for r in rows], "-" if placement == "loss" else "--",
                    marker="o", ms=3, color=colors[estimator], label=f"{estimator} in the {placement}")
        ax.set(title=title)
    axes[4].set_yscale("log")
    sweep = results["sweep"]
    kls = [s["kl"] for s in sweep]
    for row in (r for r in sweep[0]["expected"] if r["per"] == "token" and r["norm_ratio"] >= EXACT):
        cos = [next(e["cos_reverse"] for e in s["expected"] if (e["placement"], e["estimator"], e["per"]) ==
                    (row["placement"], row["estimator"], "token")) for s in sweep]
        axes[5].plot(kls, cos, "-" if row["placement"] == "loss" else "--", marker="o", ms=3,
                     color=colors[row["estimator"]], label=f"{row['estimator']} in the {row['placement']}")
    axes[5].plot(kls, [s["cos_reverse_forward"] for s in sweep], ":", color="k", label="∇ forward KL (k1 in the loss: 0)")
    axes[5].set(title="E ĝ (N = ∞) against π's distance from π_ref", xlabel="exact KL(π‖π_ref), nats",
                ylabel="cos(E ĝ, ∇KL(π‖π_ref))", xscale="log")
    for ax in axes[:5]:
        ax.set(xscale="log", xlabel="N samples")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"exact-KL lab: V = {results['vocab']}, L = {results['length']} ({results['responses']} responses), "
                 f"KL(π‖π_ref) = {results['kl']:.3f} nats; sampled gradients: mean over {results['trials']} sample sets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdict(row):
    """What an expected gradient is, in words, from its numbers."""
    if row["norm_ratio"] < EXACT:
        return "**0** (no expected gradient)"
    if row["relerr_reverse"] < EXACT:
        return "**= ∇ reverse KL**"
    if row["relerr_forward"] < EXACT:
        return "**= ∇ forward KL**"
    return "neither"


def table(results):
    """The numbers as Markdown."""
    r = results
    lines = ["# The exact-KL lab (generated by `minirlhf experiment kl-lab`)", "",
             f"V = {r['vocab']} tokens, responses of exactly L = {r['length']} tokens: all {r['responses']} listed; "
             f"a GPT with {r['params']} parameters (float64), π = π_ref + N(0, {r['distance']:g}²) on every matrix, "
             f"seed {r['seed']}" + (", quick settings" if r["quick"] else "") + f"; {r['seconds']:g} s.", "",
             f"Exact KL(π ‖ π_ref) = {r['kl']:.4f} nats, KL(π_ref ‖ π) = {r['forward_kl']:.4f} nats; "
             f"cos(∇ reverse KL, ∇ forward KL) = {r['cos_reverse_forward']:.3f}.", "",
             "## Values: K(y) = Σ_t k_t from samples y ∼ π", "",
             "| estimator | E[K] | bias | std of one sample | P(K < 0), one sample | "
             + " | ".join(f"P(mean of {n} < 0)" for n in TABLE_NS) + " |",
             "|---" * (5 + len(TABLE_NS)) + "|"]
    for estimator, v in r["values"].items():
        by_n = {row["n"]: row for row in v["by_n"]}
        lines.append(f"| {estimator} | {v['mean']:.4f} | {v['bias']:+.4f} | {v['std']:.3f} | {v['p_negative']:.3f} | "
                     + " | ".join(f"{by_n[n]['p_negative']:.3f}" for n in TABLE_NS) + " |")
    lines += ["", f"(P(mean of N < 0) from {r['value_draws']} sample sets per N; the std of an N-sample mean is "
              "the one-sample std / √N.)", "",
              "## Gradients in expectation (N = ∞: every response weighted by π)", "",
              "ĝ in the loss = ∇ Σ_y π(y) K(y) with π(y) held fixed; in the reward = Σ_y π(y) K(y) ∇ log π(y). "
              "\"per token\": K = Σ_t k(log-ratio of token t), as TRL, OpenRLHF and verl compute it; \"sequence\": "
              "K = k(log π(y) − log π_ref(y)).", "",
              "| placement | estimator | per | cos to ∇ reverse KL | rel. error | cos to ∇ forward KL | rel. error | "
              "‖E ĝ‖ / ‖∇ reverse KL‖ | E ĝ is |", "|---" * 9 + "|"]
    for e in r["expected"]:
        zero = e["norm_ratio"] < EXACT                     # the cosine of rounding noise means nothing
        lines.append(f"| {e['placement']} | {e['estimator']} | {e['per']} | "
                     + ("—" if zero else f"{e['cos_reverse']:.4f}") + f" | {e['relerr_reverse']:.2e} | "
                     + ("—" if zero else f"{e['cos_forward']:.4f}") + f" | {e['relerr_forward']:.2e} | "
                     f"{e['norm_ratio']:.2e} | {verdict(e)} |")
    p = r["positionwise"]
    lines += ["", "Per token, k2 and k3 in the loss estimate the gradient of the position-wise token KLs with "
              "the visited contexts held fixed, Σ_t E_{y_<t ∼ π}[∇ KL(π(·|y_<t) ‖ π_ref(·|y_<t))] (and the "
              f"forward version for k3): relative errors {p['k2_loss_vs_reverse']:.1e} and "
              f"{p['k3_loss_vs_forward']:.1e}.", "",
              f"## Gradients from N samples (per token; mean over {r['trials']} sample sets)", "",
              "| placement | estimator | " + " | ".join(f"cos, N = {n}" for n in TABLE_NS) + " | "
              + " | ".join(f"rel. error, N = {n}" for n in TABLE_NS) + " |", "|---" * (2 + 2 * len(TABLE_NS)) + "|"]
    for key, rows in r["sampled"].items():
        by_n = {row["n"]: row for row in rows}
        lines.append(f"| {key.split('-')[0]} | {key.split('-')[1]} | "
                     + " | ".join(f"{by_n[n]['cos_reverse']:.3f}" for n in TABLE_NS) + " | "
                     + " | ".join(f"{by_n[n]['relerr_reverse']:.2f}" for n in TABLE_NS) + " |")
    lines += ["", "(cos and relative error against the exact gradient of the reverse KL, KL(π ‖ π_ref).)", "",
              "## The expected gradients against π's distance from π_ref", "",
              "Per token; each cell: cos(E ĝ, ∇ reverse KL) (‖E ĝ‖ / ‖∇ reverse KL‖).", "",
              "| noise std | KL(π‖π_ref) | KL(π_ref‖π) | cos(∇ rev, ∇ fwd) | "
              + " | ".join(f"{p} {e}" for p in PLACEMENTS for e in ESTIMATORS) + " |", "|---" * 10 + "|"]
    for s in r["sweep"]:
        cell = {(e["placement"], e["estimator"]): "— (0)" if e["norm_ratio"] < EXACT else
                f"{e['cos_reverse']:.3f} ({e['norm_ratio']:.2g})" for e in s["expected"] if e["per"] == "token"}
        lines.append(f"| {s['distance']:g} | {s['kl']:.3f} | {s['forward_kl']:.3f} | {s['cos_reverse_forward']:.3f} | "
                     + " | ".join(cell[p, e] for p in PLACEMENTS for e in ESTIMATORS) + " |")
    lines += ["", "The std of one sample's K(y) at each distance (the variance Schulman's k3 is chosen to lower):", "",
              "| noise std | KL(π‖π_ref) | " + " | ".join(ESTIMATORS) + " |", "|---" * (2 + len(ESTIMATORS)) + "|"]
    for s in r["sweep"]:
        lines.append(f"| {s['distance']:g} | {s['kl']:.3f} | " + " | ".join(f"{s['value_std'][e]:.3f}" for e in ESTIMATORS)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
