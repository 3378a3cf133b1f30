#!/usr/bin/env python3
"""Writes tests/fixtures/eval/{bleu,cider_d,average_precision}.json: the expected values
of pal-eval's metrics (src/eval/metrics.cpp), computed by the reference implementations.

    /usr/bin/python3 -m venv /tmp/evalvenv
    /tmp/evalvenv/bin/pip install sacrebleu nltk pycocoevalcap scikit-learn numpy
    /tmp/evalvenv/bin/python scripts/make_eval_fixtures.py [--out tests/fixtures/eval]

References (versions are recorded in each file):
  BLEU-4   sacrebleu.corpus_bleu(smooth_method="none", tokenize="none", force=True), the
           expected value; nltk.translate.bleu_score.corpus_bleu (uniform weights, no
           smoothing) recorded beside it and checked equal where every hypothesis has 4
           tokens or more (below that nltk counts one n-gram of each missing order).
  CIDEr-D  pycocoevalcap.cider.cider_scorer.CiderScorer(n=4, sigma=6.0): in pycocoevalcap
           1.2 this is coco-caption's CIDEr-D (vrama91's clipping and Gaussian length
           penalty, document frequency from the evaluated references), fed already
           tokenized text (no PTB tokenizer / Java).
  AP       sklearn.metrics.average_precision_score; mAP = the mean over classes with
           positives.

Texts are already normalised (lower case, no punctuation, single spaces), so that the C++
tokenizer (pal::eval::tokenize_answer) and whitespace splitting give the same tokens.
"""
import argparse
import json
import math
import pathlib
import random
import sys
import warnings

import nltk
import numpy as np
import pycocoevalcap
import sacrebleu
import sklearn
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.cider.cider_scorer import CiderScorer
from sklearn.metrics import average_precision_score


def versions():
    return {
        "python": sys.version.split()[0],
        "nltk": nltk.__version__,
        "sacrebleu": sacrebleu.__version__,
        "pycocoevalcap": getattr(pycocoevalcap, "__version__", "1.2"),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


CAPTION_WORDS = ("a the dog cat man woman voice speaks says barks music plays loud soft "
                 "while in background with and of over rain car engine bird sings").split()


def random_captions(rng, n, low=3, high=12):
    return [" ".join(rng.choice(CAPTION_WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def bleu_cases(rng):
    cases = [
        ("identical", ["a dog barks in the background", "a man speaks while music plays"],
         [["a dog barks in the background"], ["a man speaks while music plays"]]),
        ("basic_one_reference",
         ["a dog barks loudly in the background", "a woman speaks over soft music", "rain falls on the roof of the car"],
         [["a dog barks in the background"], ["a woman speaks while soft music plays"],
          ["rain falls on the roof of a car"]]),
        ("multiple_references_closest_length",
         ["the cat meows twice", "a man says hello and a dog barks"],
         [["a cat meows", "the cat meows two times loudly", "a cat is meowing twice"],
          ["a man says hello", "a man says hello while a dog barks", "someone greets and a dog barks"]]),
        ("hypothesis_shorter_than_reference",
         ["a dog barks in the background", "soft music plays in a room"],
         [["a dog barks in the background while a man speaks"], ["soft music plays in a room with people talking"]]),
        ("no_4gram_overlap",
         ["a dog and a man barks speaks", "the rain falls heavily today"],
         [["a dog barks and a man speaks"], ["rain falls heavily on the roof"]]),
        ("hypothesis_shorter_than_4_tokens",
         ["a dog and a man barks speaks", "the rain falls"],
         [["a dog barks and a man speaks"], ["rain falls the rain"]]),
        ("empty_hypothesis_in_corpus",
         ["", "a woman speaks while music plays in the background", "a car engine starts and idles"],
         [["a dog barks"], ["a woman speaks while music plays in the background"],
          ["a car engine starts then idles for a while"]]),
        ("all_hypotheses_empty", ["", ""], [["a dog barks"], ["music plays"]]),
        ("tie_between_reference_lengths",
         ["one two three four five six"],
         [["one two three four five", "one two three four five six seven"]]),
    ]
    refs = random_captions(rng, 40)
    hyps = [r if i % 4 == 0 else random_captions(rng, 1)[0] + " " + " ".join(r.split()[:4]) for i, r in enumerate(refs)]
    cases.append(("random_corpus_40", hyps, [[r, random_captions(rng, 1)[0]] for r in refs]))
    out = []
    for name, hyps, refs in cases:
        hyp_tokens = [h.split() for h in hyps]
        ref_tokens = [[r.split() for r in rs] for rs in refs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nltk_score = corpus_bleu(ref_tokens, hyp_tokens)
        hyp_len = sum(len(h) for h in hyp_tokens)
        # Closest reference length (ties: the shorter), as nltk's closest_ref_length.
        ref_len = sum(min((len(r) for r in rs), key=lambda n, c=len(h): (abs(n - c), n))
                      for h, rs in zip(hyp_tokens, ref_tokens))
        assert len({len(rs) for rs in refs}) == 1, "sacrebleu needs as many references for every hypothesis"
        streams = [[rs[k] for rs in refs] for k in range(len(refs[0]))]
        sb = sacrebleu.corpus_bleu(hyps, streams, smooth_method="none", tokenize="none", force=True)
        assert sb.sys_len == hyp_len and sb.ref_len == ref_len, (name, sb.sys_len, sb.ref_len)
        case = {"name": name, "hypotheses": hyps, "references": refs, "bleu": sb.score / 100.0,
                "precisions": [p / 100.0 for p in sb.precisions], "brevity_penalty": sb.bp,
                "hypothesis_length": hyp_len, "reference_length": ref_len, "nltk": float(nltk_score)}
        # nltk counts a hypothesis with no n-grams of an order as one n-gram of it (its
        # modified_precision divides by max(1, count)); otherwise the two agree (up to
        # nltk's method0, which returns ~1e-77 instead of 0 when an order has no match).
        if min(len(h) for h in hyp_tokens) >= 4:
            assert abs(case["nltk"] - case["bleu"]) < 1e-9, (name, case["nltk"], case["bleu"])
        out.append(case)
    return out


def cider_cases(rng):
    cases = [
        ("basic_multi_reference",
         ["a dog barks in the background", "a man speaks while music plays", "rain falls on a car"],
         [["a dog barks", "a dog is barking in the background", "dog barking outside"],
          ["a man talks over music", "a man speaks while music plays softly"],
          ["rain falls on the roof of a car", "heavy rain on a car", "rain hits a vehicle"]]),
        ("one_reference_each",
         ["a woman says hello", "birds sing in a park", "a car engine starts", "music plays loud"],
         [["a woman says hello"], ["birds are singing in the park"], ["an engine starts"],
          ["loud music plays"]]),
        ("empty_hypothesis",
         ["", "a dog barks twice", "a cat meows"],
         [["a dog barks"], ["a dog barks twice"], ["a cat meows softly"]]),
        ("hypothesis_shorter_than_reference",
         ["dog", "music", "a man"],
         [["a dog barks in the background while a man speaks"], ["soft music plays in a room"],
          ["a man speaks with a woman"]]),
        ("no_4gram_overlap",
         ["a dog and a man speaks barks", "falls the rain heavily"],
         [["a dog barks and a man speaks"], ["the rain falls heavily"]]),
        ("repeated_words_clipped",
         ["dog dog dog dog dog barks", "a cat a cat a cat"],
         [["a dog barks", "the dog barks at a dog"], ["a cat meows", "a cat and a cat"]]),
        ("long_hypothesis_length_penalty",
         ["a man speaks while a dog barks and music plays in the background with rain and a car engine and birds",
          "a woman sings"],
         [["a man speaks while a dog barks"], ["a woman sings softly"]]),
    ]
    refs = [random_captions(rng, rng.randint(1, 5)) for _ in range(30)]
    hyps = [rs[0] if i % 5 == 0 else random_captions(rng, 1)[0] for i, rs in enumerate(refs)]
    cases.append(("random_corpus_30", hyps, refs))
    out = []
    for name, hyps, refs in cases:
        scorer = CiderScorer(n=4, sigma=6.0)
        for h, rs in zip(hyps, refs):
            scorer += (h, rs)
        score, scores = scorer.compute_score()
        out.append({"name": name, "hypotheses": hyps, "references": refs, "cider_d": float(score),
                    "per_example": [float(s) for s in scores]})
    return out


def ap_cases(rng):
    cases = [
        ("simple", [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]),
        ("perfect", [0.9, 0.8, 0.1, 0.05], [1, 1, 0, 0]),
        ("worst", [0.9, 0.8, 0.1, 0.05], [0, 0, 1, 1]),
        ("ties", [0.5, 0.5, 0.5, 0.2, 0.2, 0.9], [1, 0, 1, 0, 1, 0]),
        ("all_tied", [1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]),
        ("all_positive", [-3.0, -1.0, -2.0], [1, 1, 1]),
        ("log_likelihoods", [-0.1, -12.5, -3.25, -7.0, -0.75, -3.25, -20.0], [0, 1, 1, 0, 1, 0, 1]),
    ]
    scores = [round(rng.gauss(0, 3), 3) for _ in range(50)]
    labels = [int(rng.random() < 0.3) for _ in range(50)]
    cases.append(("random_50", scores, labels))
    out = []
    for name, s, y in cases:
        out.append({"name": name, "scores": s, "positive": y,
                    "ap": float(average_precision_score(np.array(y), np.array(s)))})
    return out


def map_cases(rng):
    out = []
    for name, n, c, missing in (("five_classes", 30, 5, []), ("class_without_positives", 24, 4, [2]),
                                ("labels_outside_classes", 20, 3, [])):
        labels = [rng.randrange(c) for _ in range(n)]
        labels = [(l + 1) % c if l in missing else l for l in labels]
        if name == "labels_outside_classes":
            labels[0] = labels[5] = -1
        # Log-likelihood-like scores, tilted towards the true class, with ties.
        scores = [[round(-abs(rng.gauss(4, 2)) + (2.0 if k == l else 0.0), 1) for k in range(c)] for l in labels]
        s = np.array(scores)
        per_class = []
        for k in range(c):
            y = np.array([int(l == k) for l in labels])
            per_class.append(float(average_precision_score(y, s[:, k])) if y.sum() > 0 else None)
        valid = [p for p in per_class if p is not None]
        out.append({"name": name, "scores": scores, "labels": labels, "per_class": per_class,
                    "map": float(np.mean(valid))})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/eval"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261127)
    meta = {"generator": "scripts/make_eval_fixtures.py", "versions": versions()}
    files = {
        "bleu.json": {**meta, "reference": "sacrebleu corpus_bleu(smooth_method='none', tokenize='none'); "
                                           "'nltk': nltk corpus_bleu (method0)", "cases": bleu_cases(rng)},
        "cider_d.json": {**meta, "reference": "pycocoevalcap.cider.cider_scorer.CiderScorer(n=4, sigma=6.0)",
                         "cases": cider_cases(rng)},
        "average_precision.json": {**meta, "reference": "sklearn.metrics.average_precision_score",
                                   "ap_cases": ap_cases(rng), "map_cases": map_cases(rng)},
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=1) + "\n")
        print(f"wrote {out / name}")
    for case in files["bleu.json"]["cases"]:
        print(f"  BLEU-4 {case['name']}: {case['bleu']:.6f}")
    for case in files["cider_d.json"]["cases"]:
        print(f"  CIDEr-D {case['name']}: {case['cider_d']:.6f}")


if __name__ == "__main__":
    main()
