"""Evaluation: every metric once, over named interfaces (chapter 00 introduces the metrics and their
intervals; each topic's module names the chapter that explains it).

    stats       Estimate, wilson, bootstrap, interval, perplexity              (chapters 00, 09)
    retrieval   zero-shot accuracy, recall@k, swap scores; the DualEncoder
                interface, itc_similarity, ITC-then-ITM retrieval, R@1        (chapters 02, 04)
    answers     VQA accuracy and answer normalisation; VQA and ITM on
                ShapesBench sets; ITM against hard negatives                   (chapters 00, 03, 04)
    captions    BLEU-4, CIDEr-D; captioning evaluated against every paraphrase  (chapter 06)

`from minivlm.eval import interval, cider_d, ...` reaches every name.
"""
from minivlm.eval.answers import (
    answer_hits,
    answer_prior,
    evaluate_hard_itm,
    evaluate_itm,
    evaluate_vqa,
    normalize_answer,
    vqa_accuracy,
)
from minivlm.eval.captions import (
    bleu,
    caption_references,
    caption_tokens,
    cider_d,
    evaluate_captions,
    ngram_counts,
    true_caption_rate,
)
from minivlm.eval.retrieval import (
    CLIP_TEMPLATES,
    DualEncoder,
    attribute_only_retrieval,
    class_prompts,
    classify_zero_shot,
    evaluate_retrieval,
    evaluate_zero_shot,
    itc_similarity,
    recall_at_k,
    retrieval_metrics,
    retrieve,
    swap_scores,
    unit_features,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_logits,
)
from minivlm.eval.stats import Estimate, bootstrap, interval, perplexity, to_record, wilson

__all__ = ["CLIP_TEMPLATES", "DualEncoder", "attribute_only_retrieval", "class_prompts", "classify_zero_shot", "to_record", "unit_features",
           "zero_shot_classifier", "zero_shot_logits", "Estimate", "answer_hits", "answer_prior", "bleu", "bootstrap", "caption_references",
           "caption_tokens", "cider_d", "evaluate_captions", "evaluate_hard_itm", "evaluate_itm", "evaluate_retrieval",
           "evaluate_vqa", "evaluate_zero_shot", "interval", "itc_similarity", "ngram_counts", "normalize_answer", "perplexity",
           "recall_at_k", "retrieval_metrics", "retrieve", "swap_scores", "true_caption_rate", "vqa_accuracy",
           "wilson", "zero_shot_accuracy"]
