"""Which installed textual-inversion embeddings a request's prompts use, read from the records
(refusals before any model is loaded) and then from their files (`PromptEmbeddings` for the
encoder, the recipe's entries, the warnings).

Rules (docs/embeddings.md):

* Every usable embedding record is in the lexicon, whatever its base, so that an SD2
  embedding in an SD1 prompt is refused naming both bases instead of read as text.
* A trigger or name claimed by several embeddings goes to the one that fits the main model,
  then to the one installed first; a prompt using such a word gets a warning naming the others.
* A trigger that is also a word the tokenizer knows means the embedding (as in A1111), with a
  warning that says how to get the word back (edit the trigger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from loraworks.embeddings import Embedding, Lexicon, check_fits, read_embedding
from loraworks.generation.conditioning import PromptEmbeddings
from loraworks.generation.errors import UnusableModel
from loraworks.models import ModelManager, ModelRecord

Where = Literal["prompt", "negative"]


@dataclass(frozen=True)
class EmbeddingUse:
    """An installed embedding a request uses, and in which of its prompts."""

    record: ModelRecord
    where: tuple[Where, ...]


@dataclass(frozen=True)
class Installed:
    """The installed embeddings by trigger and by name, and the words several of them claim."""

    triggers: dict[str, ModelRecord]
    names: dict[str, ModelRecord]
    contested: dict[str, list[str]]  # casefolded word → every claimant's name

    def lexicon(self) -> Lexicon[ModelRecord]:
        return Lexicon(self.triggers, self.names)


def installed(mm: ModelManager, main: ModelRecord) -> Installed:
    """The lexicon's tables: records that fit `main` first, then oldest first, so that a word
    several embeddings claim goes to the first of them."""
    records = sorted(
        mm.list(type="embedding", status="ok"),
        key=lambda r: (main.base is None or not r.fits(main.base), r.created_at),
    )
    triggers: dict[str, ModelRecord] = {}
    names: dict[str, ModelRecord] = {}
    claimants: dict[str, list[str]] = {}
    for record in records:
        for table, words in ((triggers, record.trigger_words), (names, [record.name])):
            for word in words:
                folded = word.strip().casefold()
                if not folded:
                    continue
                table.setdefault(folded, record)
                claim = claimants.setdefault(folded, [])
                if record.name not in claim:
                    claim.append(record.name)
    contested = {w: c for w, c in claimants.items() if len(c) > 1}
    return Installed(triggers, names, contested)


def find_uses(
    mm: ModelManager, main: ModelRecord, prompt: str, negative: str | None
) -> tuple[list[EmbeddingUse], Installed]:
    """The embeddings `prompt` and `negative` use; refuses (from the records alone) an unknown
    `embedding:name`, too many uses and an embedding for another base."""
    table = installed(mm, main)
    lexicon = table.lexicon()
    where: dict[str, list[Where]] = {}
    records: dict[str, ModelRecord] = {}
    for text, label in ((prompt, "prompt"), (negative or "", "negative")):
        for record in lexicon.used(text):
            records[record.key] = record
            if label not in where.setdefault(record.key, []):
                where[record.key].append(label)
    uses = [EmbeddingUse(records[k], tuple(w)) for k, w in where.items()]
    for use in uses:
        if main.base is not None and use.record.base is not None:
            check_fits(use.record.base, use.record.name, main.base, main.name)
    return uses, table


@dataclass(frozen=True)
class Prepared:
    embeddings: PromptEmbeddings | None
    uses: tuple[EmbeddingUse, ...]
    warnings: list[str]


def prepare(mm: ModelManager, main: ModelRecord, prompt: str, negative: str | None) -> Prepared:
    """The embeddings the prompts use, read from their files (before the main model is
    loaded: a bad file loses nothing), with the base and contested-word warnings."""
    uses, table = find_uses(mm, main, prompt, negative)
    if not uses:
        return Prepared(None, (), [])
    warnings: list[str] = []
    text = f"{prompt}\n{negative or ''}".casefold()
    loaded: dict[str, Embedding] = {}
    for use in uses:
        record = use.record
        try:
            loaded[record.key] = read_embedding(record.path, record.name)
        except OSError as exc:
            raise UnusableModel(f"embedding '{record.name}' cannot be read: {exc}") from None
        if main.base is not None:
            warnings += check_fits(loaded[record.key].base, record.name, main.base, main.name)
    for word, claimants in table.contested.items():
        if word in text:
            winner = (table.triggers.get(word) or table.names[word]).name
            warnings.append(
                f"'{word}' is claimed by several embeddings ({', '.join(claimants)}); it means "
                f"'{winner}' here; write embedding:<name> or edit a trigger to choose"
            )
    # only the used ones: the same matches as the full lexicon (each match is a used one, and
    # the longest at its place among all words is so among fewer)
    embedded = Lexicon(
        {w: loaded[r.key] for w, r in table.triggers.items() if r.key in loaded},
        {w: loaded[r.key] for w, r in table.names.items() if r.key in loaded},
    )
    key = tuple(sorted((use.record.name, use.record.hash or "") for use in uses))
    return Prepared(PromptEmbeddings(embedded, key), tuple(uses), warnings)


def word_warnings(
    prepared: Prepared, tokenizer: Any, prompt: str, negative: str | None
) -> list[str]:
    """Each trigger in the prompts made only of words `tokenizer` knows whole (`red`, `bad
    hands`): it means the embedding, and the warning says how to write the word again."""
    vocab = tokenizer.get_vocab()
    text = f"{prompt}\n{negative or ''}".casefold()
    out = []
    for use in prepared.uses:
        for trigger in use.record.trigger_words:
            words = trigger.casefold().split()
            if words and trigger.casefold() in text and all(f"{w}</w>" in vocab for w in words):
                out.append(
                    f"embedding '{use.record.name}': its trigger '{trigger}' is also a word; "
                    "in prompts it means the embedding (edit the trigger to write the word)"
                )
    return out
