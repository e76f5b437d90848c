"""A SentencePiece BPE model (Llama/Mistral layout) as an equivalent `tokenizers` tokenizer.json: how the synthetic
Bonsai checkpoints and the tokenizer tests get the tokenizer.json a real Bonsai folder ships."""

from __future__ import annotations

from pathlib import Path


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
