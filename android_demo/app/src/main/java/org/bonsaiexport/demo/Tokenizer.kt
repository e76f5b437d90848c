package org.bonsaiexport.demo

import java.io.File
import java.nio.ByteBuffer
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import java.text.Normalizer
import java.util.Locale
import java.util.PriorityQueue

/**
 * The artifact's tokenizer.json (the reference's own `tokenizers` pipeline, docs/TOKENIZER.md), in plain Kotlin:
 * no native dependency, and the same ids as transformers.AutoTokenizer on the exported checkpoint.
 *
 * Byte-level BPE (Qwen2/Qwen3, Llama-3; TokenizerKind.BYTE_LEVEL): added tokens are cut out as below; each segment
 * is NFC-normalized when the pipeline says so and cut into words by the Split regex (ByteLevel.split); each word's
 * UTF-8 bytes are one symbol each (GPT-2's byte alphabet), merged by rank as below (with ignore_merges, a word that
 * is a piece is taken whole). Decoding maps tokens back to bytes and reads them as UTF-8, lossily.
 *
 * SentencePiece-style encoding, exactly the subset of the spec (TokenizerJson refuses any other pipeline at load):
 *   1. added tokens (<s>, </s>, <unk>, ...) are cut out of the text leftmost-longest, each as its id; the text
 *      between them forms segments (empty ones dropped);
 *   2. per segment, spaces become "▁" and a "▁" is prepended as the pipeline says (legacy normalizer: always;
 *      Metaspace: unless the segment starts with "▁", for prepend_scheme always, or first at text offset 0);
 *   3. BPE on the whole segment: one symbol per code point (a code point that is not a piece becomes its UTF-8
 *      bytes' <0xNN> pieces, or unk), then the adjacent pair of lowest merge rank is merged, leftmost first,
 *      until no adjacent pair is a merge;
 *   4. the post-processor's special tokens (BOS, EOS) around the ids.
 * Decoding skips special tokens, maps "▁" to " ", reads runs of byte pieces as UTF-8 (an invalid run gives one
 * U+FFFD per byte, as `tokenizers` does) and, with the decoder's Strip, drops one leading space of the text.
 *
 * Worked examples with Bonsai's (Mistral v1's) tokenizer as exported (prepend_scheme first, BOS added), checked
 * against transformers by the repository's tests:
 *   "The capital of France is"  -> <s> ▁The ▁capital ▁of ▁France ▁is -> 1 415 5565 302 4843 349
 *   "Hello <s> world"           -> <s> ▁Hello ▁ <s> ▁world           -> 1 22557 28705 1 1526
 */
class Tokenizer(private val parts: TokenizerParts) {
    /** id -> its token's text (added tokens over vocab pieces); null for an id that neither has. */
    private val tokens: Array<String?>

    /** Whether an id's token is special (skipped when decoding). */
    private val special: BooleanArray

    /** Added tokens by their first char, longest first: the candidates of a leftmost-longest match there. */
    private val addedByFirstChar: Map<Char, List<AddedToken>> =
        parts.added.sortedByDescending { it.content.length }.groupBy { it.content[0] }

    private val byteLevel = parts.kind == TokenizerKind.BYTE_LEVEL

    /** The id of the piece <0xNN> for each byte NN, -1 when the vocab lacks it; byte-level: of its alphabet char. */
    private val byteIds = IntArray(256) {
        val piece = if (byteLevel) ByteLevel.charOf[it].toString() else String.format(Locale.ROOT, "<0x%02X>", it)
        parts.vocab[piece] ?: -1
    }

    init {
        val size = maxOf(parts.vocab.values.maxOrNull() ?: -1, parts.added.maxOfOrNull { it.id } ?: -1) + 1
        tokens = arrayOfNulls(size)
        for ((piece, id) in parts.vocab) tokens[id] = piece
        for (t in parts.added) tokens[t.id] = t.content
        // tokenizers tells special tokens by their text, so a vocab id with a special token's text is skipped too.
        val specialTexts = parts.added.filter { it.special }.map { it.content }.toSet()
        special = BooleanArray(size) { tokens[it] in specialTexts }
    }

    /** Ids run from 0 to vocabSize - 1 (the model's logits must cover them). */
    val vocabSize: Int get() = tokens.size

    fun piece(id: Int): String? = tokens.getOrNull(id)

    /** The reference ids of `text`: with the post-processor's BOS/EOS unless addSpecialTokens is false. */
    fun encode(text: String, addSpecialTokens: Boolean = true): IntArray {
        val ids = ArrayList<Int>(text.length + 2)
        if (addSpecialTokens) parts.before.forEach { ids.add(it) }
        splitAdded(text, ids) { start, end -> encodeSegment(text, start, end, ids) }
        if (addSpecialTokens) parts.after.forEach { ids.add(it) }
        return ids.toIntArray()
    }

    /**
     * The words BPE runs on, in order: the text between added tokens, spaced (SentencePiece) or normalized and
     * split (byte-level) as the pipeline says; what the pre-tokenizer cut, for tests.
     */
    fun words(text: String): List<String> {
        val out = ArrayList<String>()
        splitAdded(text, ArrayList()) { start, end -> out.addAll(segmentWords(text, start, end)) }
        return out
    }

    /** Cuts the added tokens out of `text` leftmost-longest (their ids go to `ids`), passing the rest on. */
    private inline fun splitAdded(text: String, ids: MutableList<Int>, segment: (Int, Int) -> Unit) {
        var segmentStart = 0
        var i = 0
        while (i < text.length) {
            val match = addedTokenAt(text, i)
            if (match == null) {
                i++
                continue
            }
            if (i > segmentStart) segment(segmentStart, i)
            ids.add(match.id)
            i += match.content.length
            segmentStart = i
        }
        if (text.length > segmentStart) segment(segmentStart, text.length)
    }

    fun decode(ids: IntArray): String {
        val decoder = StreamDecoder()
        val out = StringBuilder()
        for (id in ids) out.append(decoder.push(id))
        return out.append(decoder.flush()).toString()
    }

    /**
     * A decoder of the ids that follow `context` (the prompt's ids): its deltas, concatenated, are
     * decode(context + ids) less decode(context). The context matters for the decoder's Strip, which drops one
     * leading space of the whole text: after a prompt, the first generated word keeps its space.
     */
    fun streamDecoder(context: IntArray = IntArray(0)): StreamDecoder {
        val decoder = StreamDecoder()
        for (id in context) decoder.push(id)
        decoder.flush()
        return decoder
    }

    private fun addedTokenAt(text: String, at: Int): AddedToken? =
        addedByFirstChar[text[at]]?.firstOrNull { text.startsWith(it.content, at) }

    private fun encodeSegment(text: String, start: Int, end: Int, ids: MutableList<Int>) {
        for (word in segmentWords(text, start, end)) {
            if (byteLevel) encodeByteLevel(word, ids) else for (id in mergeAll(initialSymbols(word))) ids.add(id)
        }
    }

    private fun segmentWords(text: String, start: Int, end: Int): List<String> {
        if (!byteLevel) return listOf(spaced(text, start, end))
        val segment = text.substring(start, end)
        val normalized = if (parts.nfc) Normalizer.normalize(segment, Normalizer.Form.NFC) else segment
        return ByteLevel.split(normalized, parts.split)
    }

    /** One symbol per UTF-8 byte, merged; with ignore_merges a word that is a piece is that piece. */
    private fun encodeByteLevel(word: String, ids: MutableList<Int>) {
        val bytes = word.toByteArray(Charsets.UTF_8)
        val whole = if (parts.ignoreMerges) parts.vocab[ByteLevel.text(bytes)] else null
        if (whole != null) {
            ids.add(whole)
            return
        }
        for (id in mergeAll(IntArray(bytes.size) { byteIds[bytes[it].toInt() and 0xFF] })) ids.add(id)
    }

    /** Step 2 for text[start, end): the word SentencePiece-style BPE runs on. */
    private fun spaced(text: String, start: Int, end: Int): String {
        val spaced = text.substring(start, end).replace(' ', SPACE)
        val prepend = when (parts.prefix) {
            PrefixRule.LEGACY -> true
            PrefixRule.ALWAYS -> !spaced.startsWith(SPACE)
            PrefixRule.FIRST -> start == 0 && !spaced.startsWith(SPACE)
            PrefixRule.NEVER -> false
        }
        return if (prepend) SPACE + spaced else spaced
    }

    /** One id per code point: its piece, else its bytes' <0xNN> pieces, else unk (consecutive unks fused). */
    private fun initialSymbols(word: String): IntArray {
        val symbols = ArrayList<Int>(word.length)
        var unkPending = false
        var i = 0
        while (i < word.length) {
            val end = i + Character.charCount(word.codePointAt(i))
            val char = word.substring(i, end)
            val id = parts.vocab[char]
            val bytes = if (id == null) byteFallback(char) else null
            when {
                id != null -> {
                    if (unkPending) symbols.add(parts.unkId)
                    unkPending = false
                    symbols.add(id)
                }
                // As in tokenizers, a pending unk is not flushed by byte pieces: it goes after them.
                bytes != null -> bytes.forEach { symbols.add(it) }
                // With no unk_token, tokenizers drops the code point.
                parts.unkId >= 0 -> unkPending = true
            }
            i = end
        }
        if (unkPending) symbols.add(parts.unkId)
        return symbols.toIntArray()
    }

    /** The <0xNN> ids of a code point's UTF-8 bytes, or null when the vocab lacks one of them. */
    private fun byteFallback(char: String): List<Int>? =
        char.toByteArray(Charsets.UTF_8).map { b -> byteIds[b.toInt() and 0xFF].takeIf { it >= 0 } ?: return null }

    /**
     * BPE merges over a doubly linked list of symbols, with a heap of candidate pairs keyed (rank, left position):
     * O(n log n) for a segment of n symbols. A merge empties the right symbol and queues the two pairs it forms;
     * a queued pair is stale when the pair now at its position has another rank.
     */
    private fun mergeAll(symbols: IntArray): List<Int> {
        val n = symbols.size
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val prev = IntArray(n) { it - 1 }
        val heap = PriorityQueue<Long>()
        fun rankAt(left: Int): Long? {
            val right = next[left]
            if (right < 0) return null
            return parts.merges[TokenizerJson.pairKey(symbols[left], symbols[right])]
        }
        fun queue(left: Int) {
            val merge = rankAt(left) ?: return
            heap.add((merge ushr 32 shl 32) or left.toLong())
        }
        for (left in 0 until n - 1) queue(left)
        while (heap.isNotEmpty()) {
            val top = heap.poll()!!
            val left = top.toInt()
            if (symbols[left] < 0) continue
            val merge = rankAt(left) ?: continue
            if (merge ushr 32 != top ushr 32) continue
            val right = next[left]
            symbols[left] = merge.toInt()
            symbols[right] = -1
            next[left] = next[right]
            if (next[right] >= 0) prev[next[right]] = left
            if (prev[left] >= 0) queue(prev[left])
            queue(left)
        }
        return symbols.filter { it >= 0 }
    }

    /**
     * Text deltas for a growing list of ids. A run of byte pieces is held back until a piece that is not a byte
     * (or flush()) ends it, because tokenizers decodes each run as a whole: a valid run is its UTF-8 text, an
     * invalid one one U+FFFD per byte, so no byte of a run can be shown before the run is complete. The deltas,
     * concatenated, equal decode() of the same ids.
     */
    inner class StreamDecoder internal constructor() {
        /** Nothing decoded yet: the decoder's Strip applies to the next text. */
        private var atStart = true
        private var run = ByteArray(16)
        private var runLength = 0

        // Reports invalid UTF-8 instead of replacing it (one per decoder: a CharsetDecoder is not thread-safe).
        private val strictUtf8 = Charsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT)

        /** Byte-level: the bytes not shown yet (a character's first bytes, waiting for the rest). */
        private val pending = ByteLevel.Bytes()

        fun push(id: Int): String {
            val token = tokens.getOrNull(id)?.takeUnless { special[id] } ?: return ""
            if (byteLevel) return pushBytes(ByteLevel.bytes(token))
            val byte = bytePieceValue(token)
            if (byte >= 0) {
                hold(byte)
                return ""
            }
            return emit(takeRun() + token.replace(SPACE, ' '))
        }

        /** The text still held back (call at the end). */
        fun flush(): String {
            if (!byteLevel) return emit(takeRun())
            val text = ByteLevel.lossyUtf8(pending.array(), 0, pending.size())
            pending.reset()
            return text
        }

        /**
         * The ByteLevel decoder reads all bytes as UTF-8 at once, lossily; a character cut short at the end is held
         * back (its U+FFFD could still become the character), everything before it is final.
         */
        private fun pushBytes(bytes: ByteArray): String {
            pending.write(bytes, 0, bytes.size)
            val buf = pending.array()
            val end = pending.size()
            val held = (maxOf(0, end - 3) until end).firstOrNull { ByteLevel.validPrefix(buf, it, end) == end - it }
            val shown = held ?: end
            val text = ByteLevel.lossyUtf8(buf, 0, shown)
            pending.dropFirst(shown)
            return text
        }

        private fun hold(byte: Int) {
            if (runLength == run.size) run = run.copyOf(run.size * 2)
            run[runLength++] = byte.toByte()
        }

        private fun takeRun(): String {
            if (runLength == 0) return ""
            val text = try {
                strictUtf8.decode(ByteBuffer.wrap(run, 0, runLength)).toString()
            } catch (e: CharacterCodingException) {
                REPLACEMENT.toString().repeat(runLength)
            }
            runLength = 0
            return text
        }

        /** Applies the decoder's Strip to the first text of the whole decode. */
        private fun emit(text: String): String {
            if (!atStart || text.isEmpty()) return text
            atStart = false
            return if (parts.stripLeadingSpace && text[0] == ' ') text.substring(1) else text
        }
    }

    companion object {
        const val SPACE = '\u2581'
        private const val REPLACEMENT = '\uFFFD'

        fun load(file: File): Tokenizer = parse(file.readText())

        fun parse(json: String): Tokenizer = Tokenizer(TokenizerJson.read(json))

        /** "<0x41>" -> 0x41 (either case of hex digits, as tokenizers' ByteFallback reads it); -1 otherwise. */
        internal fun bytePieceValue(token: String): Int {
            if (token.length != 6 || !token.startsWith("<0x") || token[5] != '>') return -1
            val high = Character.digit(token[3], 16)
            val low = Character.digit(token[4], 16)
            return if (high < 0 || low < 0) -1 else high * 16 + low
        }
    }
}
