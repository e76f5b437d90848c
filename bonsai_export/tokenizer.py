"""Tokenizer loading, streaming detokenization, and building tokenizer.json from a SentencePiece model.

Bonsai uses Mistral v1's SentencePiece BPE model (32000 pieces, byte fallback, <unk>=0 <s>=1 </s>=2).
"""

from __future__ import annotations

from pathlib import Path

from .errors import BonsaiError


class Tokenizer:
    """tokenizer.json through `tokenizers` when present, tokenizer.model through `sentencepiece` otherwise."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self._hf = self._sp = None
        try:
            if (folder / "tokenizer.json").is_file():
                from tokenizers import Tokenizer as HFTokenizer

                self._hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
            elif (folder / "tokenizer.model").is_file():
                import sentencepiece as spm

                self._sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
            else:
                raise BonsaiError(f"{folder}: no tokenizer.json or tokenizer.model")
        except Exception as exc:  # tokenizers / sentencepiece raise their own types on a corrupt file
            if isinstance(exc, BonsaiError):
                raise
            name = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "tokenizer.model"
            raise BonsaiError(f"{folder / name}: cannot be read ({str(exc).splitlines()[0][:200]}); copy in the "
                              f"model's tokenizer files again") from None

    @classmethod
    def from_spm(cls, model_file: Path) -> "Tokenizer":
        """A tokenizer over a bare SentencePiece model file."""
        import sentencepiece as spm

        tok = cls.__new__(cls)
        tok._hf, tok._sp = None, spm.SentencePieceProcessor(model_file=str(model_file))
        return tok

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size() if self._hf else self._sp.get_piece_size()

    def encode(self, text: str, bos_id: int | None = None) -> list[int]:
        ids = self._hf.encode(text, add_special_tokens=False).ids if self._hf else self._sp.encode(text)
        return ([bos_id] if bos_id is not None else []) + list(ids)

    def decode(self, ids: list[int]) -> str:
        return self._hf.decode(ids, skip_special_tokens=True) if self._hf else self._sp.decode(ids)


class StreamDecoder:
    """Turns a growing list of ids into text deltas, holding back incomplete UTF-8 byte-fallback sequences.

    `context` (the prompt's last ids) is decoded in front of the new ids and cut off again: SentencePiece drops the
    space that starts a decoded text, which would glue the first generated word to the prompt."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()):
        self.tokenizer, self.ids = tokenizer, list(context)
        self.text = tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is still arriving
            return ""
        delta, self.text = text[len(self.text):], text
        return delta


def spm_to_tokenizer_json(model_file: Path, out_file: Path) -> None:
    """Write a `tokenizers` tokenizer.json equivalent to a SentencePiece BPE model (Llama/Mistral layout).

    transformers' own converter cannot be used here: in transformers 5 it no longer converts a bare .model file.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # every split of a piece into two pieces, ranked as SentencePiece ranks merges: by the merged piece's score
    # (whitespace runs score -1e9, so they merge last), then by id
    merges = []
    for piece, rank in vocab.items():
        if sp.is_control(rank) or sp.is_unknown(rank) or sp.is_byte(rank):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-sp.get_score(rank), rank, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(merges)]
    tok = HFTokenizer(models.BPE(vocab, merges, unk_token=sp.id_to_piece(sp.unk_id()), fuse_unk=True,
                                 byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = [sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = sp.id_to_piece(sp.bos_id())
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, sp.bos_id())])
    tok.save(str(out_file))
