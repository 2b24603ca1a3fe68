"""Do a prompt set's prompts, plus the generation budget, fit the model's context? Checked before compute.

A prompt is encoded as the model sees it (`data.tokenizer.encode_prompt`: question + "\\n\\n", no
BOS). With a budget of `max_new_tokens`, prompt p fits when len(p) + max_new_tokens <= context. Left
alone, a prompt that does not fit generates until the context is full, so its effective budget is
shorter than the one asked for (its generations are cut, and count as truncated: wrong), and a
prompt as long as the context cannot be sampled at all. What to do with them is the run's choice
(`over_context`, in eval and RL prompt settings):

    error    (default) stop before any compute, with the count and the longest prompt
    skip     leave the prompts that do not fit out of the set; results record how many
    shorten  keep them with whatever budget the context leaves (the paper's own evaluation: 2048 new
             tokens in a 2048-token context, cut by the context); prompts with no room at all are
             skipped; results record both counts

The record (`ContextFit.record`) goes into results.json as `context` so the report can flag an
evaluation that did not run every prompt, or not with the full budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompts
from echochamber.errors import UserError

OverContext = Literal["error", "skip", "shorten"]


@dataclass(frozen=True)
class ContextFit:
    """How one prompt set fits a context: every prompt's encoded length, and the limits."""

    name: str  # what the set is, for messages ("math500", "RL prompts (gsm8k)")
    ids: tuple[str, ...]
    lengths: tuple[int, ...]  # encoded prompt tokens, in the order of `ids`
    context: int
    max_new_tokens: int

    def over(self) -> list[int]:
        """Positions of prompts whose length plus the budget exceeds the context."""
        return [i for i, n in enumerate(self.lengths) if n + self.max_new_tokens > self.context]

    def no_room(self) -> list[int]:
        """Positions of prompts that leave no room for a single new token."""
        return [i for i, n in enumerate(self.lengths) if n >= self.context]

    def message(self, setting: str) -> str:
        """The one-line error: how many, the budget, the context, the longest prompt, the way out."""
        over = self.over()
        longest = max(range(len(self.lengths)), key=self.lengths.__getitem__)
        return (
            f"{self.name}: {len(over)} of {len(self.lengths)} prompts + {self.max_new_tokens} new tokens exceed "
            f"the model's context of {self.context} (longest {self.lengths[longest]} tokens: {self.ids[longest]}); "
            f"set {setting}=skip to leave them out or {setting}=shorten to let the context cut their generations"
        )

    def record(self, policy: OverContext) -> dict[str, Any]:
        """What results.json keeps (`context`): the limits, the policy, and what it did."""
        skipped = self.over() if policy == "skip" else self.no_room()
        shortened = len(self.over()) - len(self.no_room()) if policy == "shorten" else 0
        return {
            "context": self.context,
            "max_new_tokens": self.max_new_tokens,
            "over_context": policy,
            "prompts": len(self.lengths),
            "over": len(self.over()),
            "skipped": len(skipped) if policy != "error" else 0,
            "shortened": shortened,
            "longest_prompt": max(self.lengths, default=0),
        }


def measure(
    name: str, records: Sequence[Record], tokenizer: Any, context: int, max_new_tokens: int
) -> ContextFit:
    """Encode every prompt once (one batched tokenizer call) and keep the lengths."""
    lengths = [len(ids) for ids in encode_prompts(tokenizer, [record.prompt for record in records])]
    return ContextFit(name, tuple(record.id for record in records), tuple(lengths), context, max_new_tokens)


def fit_prompts(
    name: str,
    records: Sequence[Record],
    tokenizer: Any,
    *,
    context: int,
    max_new_tokens: int,
    policy: OverContext,
    setting: str,
) -> tuple[list[Record], dict[str, Any]]:
    """(the records to run, the `context` record) under `policy`; `setting` names the config key the
    error tells the user to change (eval.over_context, rl.prompts.over_context, ...)."""
    fit = measure(name, records, tokenizer, context, max_new_tokens)
    over = fit.over()
    if over and policy == "error":
        raise UserError(fit.message(setting))
    dropped = set(over if policy == "skip" else fit.no_room())
    kept = [record for i, record in enumerate(records) if i not in dropped]
    if not kept:
        raise UserError(f"{fit.message(setting)}; under {setting}={policy} no prompt is left")
    return kept, fit.record(policy)


def model_context(model: Any) -> int:
    """The number of positions a loaded causal LM attends over (its config's max_position_embeddings)."""
    return int(model.config.max_position_embeddings)


def context_note(record: dict[str, Any] | None) -> str:
    """" (3 skipped, 5 with a shortened budget: over the context of 512)", or "" when every prompt ran
    with the full budget (or the record predates the check)."""
    if not record or not (record["skipped"] or record["shortened"]):
        return ""
    parts = [f"{record['skipped']} skipped"] if record["skipped"] else []
    parts += [f"{record['shortened']} with a shortened budget"] if record["shortened"] else []
    return f" ({', '.join(parts)}: over the context of {record['context']})"
