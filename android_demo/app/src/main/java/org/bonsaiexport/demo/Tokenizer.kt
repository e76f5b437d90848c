package org.bonsaiexport.demo

import java.io.File
import java.util.PriorityQueue

/**
 * SentencePiece BPE tokenizer over the artifact's `tokenizer.model`, in plain Kotlin (no native dependency).
 *
 * The file is a protobuf `ModelProto`; the few fields read here (numbers as in sentencepiece_model.proto):
 *   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
 *   SentencePiece   1 piece (string), 2 score (float), 3 type (1 normal, 2 unknown, 3 control,
 *                   4 user defined, 5 unused, 6 byte)
 *   TrainerSpec     3 model_type (2 = BPE)
 *   NormalizerSpec  1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces
 *
 * Encoding is SentencePiece's BPE:
 *   1. normalize: trim and squeeze spaces if remove_extra_whitespaces, prepend "▁" if add_dummy_prefix, replace
 *      every " " by "▁" (U+2581);
 *   2. split into code points, one symbol each;
 *   3. repeatedly merge the adjacent pair whose concatenation is a vocabulary piece (normal, user defined or unused)
 *      with the highest score, the leftmost pair on ties;
 *   4. a final symbol that is a piece gives its id; any other symbol gives the ids of its UTF-8 bytes' `<0xNN>`
 *      pieces (byte fallback), or the unknown id when the model has no byte pieces.
 * Decoding maps each piece back to bytes ("▁" -> " ", `<0xNN>` -> that byte, control pieces -> nothing), drops
 * the dummy-prefix space of the first piece, and reads the bytes as UTF-8.
 *
 * Only the "identity" normalizer (no Unicode normalization) is reproduced; Bonsai's tokenizer (Mistral v1's, as
 * Llama's) uses it. Worked examples with that tokenizer, checked against sentencepiece by the repository's tests
 * and against this class by TokenizerTest:
 *   "Hello world"               -> ▁Hello ▁world                 -> 22557 1526
 *   "The capital of France is"  -> ▁The ▁capital ▁of ▁France ▁is -> 415 5565 302 4843 349
 */
class Tokenizer private constructor(
    private val pieces: Array<String>,
    private val scores: FloatArray,
    private val types: IntArray,
    private val addDummyPrefix: Boolean,
    private val removeExtraWhitespaces: Boolean,
) {
    val vocabSize: Int get() = pieces.size

    /** Pieces BPE may produce, as SentencePiece's `pieces_` map: normal, user-defined and unused pieces. */
    private val mergeable = HashMap<String, Int>(pieces.size * 2)
    private val byteIds = IntArray(256) { -1 }
    private val unkId: Int

    init {
        for (id in pieces.indices) {
            when (types[id]) {
                TYPE_NORMAL, TYPE_USER_DEFINED, TYPE_UNUSED -> mergeable.putIfAbsent(pieces[id], id)
                TYPE_BYTE -> parseBytePiece(pieces[id])?.let { byteIds[it] = id }
            }
        }
        unkId = types.indexOf(TYPE_UNKNOWN)
        require(unkId >= 0) { "tokenizer.model has no unknown piece" }
    }

    fun piece(id: Int): String = pieces[id]

    fun encode(text: String): IntArray {
        var s = text
        if (removeExtraWhitespaces) s = s.trim(' ').replace(MULTIPLE_SPACES, " ")
        if (s.isEmpty()) return IntArray(0)
        if (addDummyPrefix) s = " $s"
        s = s.replace(' ', SPACE)

        // One symbol per code point, linked both ways; a merge grows the left symbol and empties the right one.
        val symbols = ArrayList<String>(s.length)
        var i = 0
        while (i < s.length) {
            val end = i + Character.charCount(s.codePointAt(i))
            symbols.add(s.substring(i, end))
            i = end
        }
        val n = symbols.size
        val prev = IntArray(n) { it - 1 }
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }

        val agenda = PriorityQueue<Candidate>(compareByDescending<Candidate> { it.score }.thenBy { it.left })
        fun consider(left: Int, right: Int) {
            if (left < 0 || right < 0) return
            val merged = symbols[left] + symbols[right]
            val id = mergeable[merged] ?: return
            agenda.add(Candidate(left, right, scores[id], merged.length))
        }
        for (k in 0 until n - 1) consider(k, k + 1)

        while (agenda.isNotEmpty()) {
            val c = agenda.poll()!!
            // Stale: one side was merged away or grew since this candidate was queued.
            if (symbols[c.left].isEmpty() || symbols[c.right].isEmpty() ||
                symbols[c.left].length + symbols[c.right].length != c.length
            ) continue
            symbols[c.left] = symbols[c.left] + symbols[c.right]
            symbols[c.right] = ""
            next[c.left] = next[c.right]
            if (next[c.right] >= 0) prev[next[c.right]] = c.left
            consider(prev[c.left], c.left)
            consider(c.left, next[c.left])
        }

        val ids = ArrayList<Int>(n)
        var k = 0
        while (k >= 0) {
            val symbol = symbols[k]
            val id = mergeable[symbol]
            if (id != null) {
                ids.add(id)
            } else {
                for (b in symbol.toByteArray(Charsets.UTF_8)) {
                    val byteId = byteIds[b.toInt() and 0xFF]
                    ids.add(if (byteId >= 0) byteId else unkId)
                }
            }
            k = next[k]
        }
        return ids.toIntArray()
    }

    fun decode(ids: IntArray): String {
        val decoder = StreamDecoder()
        val out = StringBuilder()
        for (id in ids) out.append(decoder.push(id))
        return out.append(decoder.flush()).toString()
    }

    /** Text deltas for a growing list of ids; holds back a UTF-8 character whose byte pieces are still arriving. */
    inner class StreamDecoder {
        private var pending = ByteArray(16)
        private var pendingLength = 0
        private var atStart = true

        fun push(id: Int): String {
            append(pieceBytes(id))
            val complete = completeUtf8Length(pending, pendingLength)
            val text = String(pending, 0, complete, Charsets.UTF_8)
            pending.copyInto(pending, 0, complete, pendingLength)
            pendingLength -= complete
            return text
        }

        /** Whatever is left (an incomplete character decodes as U+FFFD). */
        fun flush(): String {
            val text = String(pending, 0, pendingLength, Charsets.UTF_8)
            pendingLength = 0
            return text
        }

        private fun pieceBytes(id: Int): ByteArray {
            if (id < 0 || id >= pieces.size) return ByteArray(0)
            return when (types[id]) {
                TYPE_CONTROL -> ByteArray(0)
                TYPE_BYTE -> {
                    atStart = false
                    byteArrayOf((parseBytePiece(pieces[id]) ?: 0).toByte())
                }
                else -> {
                    var text = if (types[id] == TYPE_UNKNOWN) UNKNOWN_SURFACE else pieces[id].replace(SPACE, ' ')
                    if (atStart && addDummyPrefix && types[id] != TYPE_UNKNOWN && text.startsWith(' ')) {
                        text = text.substring(1)
                    }
                    atStart = false
                    text.toByteArray(Charsets.UTF_8)
                }
            }
        }

        private fun append(bytes: ByteArray) {
            if (pendingLength + bytes.size > pending.size) {
                pending = pending.copyOf(maxOf(pending.size * 2, pendingLength + bytes.size))
            }
            bytes.copyInto(pending, pendingLength)
            pendingLength += bytes.size
        }
    }

    private class Candidate(val left: Int, val right: Int, val score: Float, val length: Int)

    companion object {
        const val SPACE = '\u2581'
        private const val UNKNOWN_SURFACE = " \u2047 "
        private val MULTIPLE_SPACES = Regex(" {2,}")

        // ModelProto and nested message field numbers (sentencepiece_model.proto).
        const val MODEL_PIECES = 1
        const val MODEL_TRAINER_SPEC = 2
        const val MODEL_NORMALIZER_SPEC = 3
        const val PIECE_PIECE = 1
        const val PIECE_SCORE = 2
        const val PIECE_TYPE = 3
        const val TRAINER_MODEL_TYPE = 3
        const val NORMALIZER_NAME = 1
        const val NORMALIZER_ADD_DUMMY_PREFIX = 3
        const val NORMALIZER_REMOVE_EXTRA_WHITESPACES = 4

        // SentencePiece.Type and TrainerSpec.ModelType values.
        const val TYPE_NORMAL = 1
        const val TYPE_UNKNOWN = 2
        const val TYPE_CONTROL = 3
        const val TYPE_USER_DEFINED = 4
        const val TYPE_UNUSED = 5
        const val TYPE_BYTE = 6
        const val MODEL_TYPE_UNIGRAM = 1
        const val MODEL_TYPE_BPE = 2

        fun load(file: File): Tokenizer = parse(file.readBytes())

        fun parse(bytes: ByteArray): Tokenizer {
            val pieces = ArrayList<String>()
            val scores = ArrayList<Float>()
            val types = ArrayList<Int>()
            // Proto defaults, used when the fields are absent.
            var modelType = MODEL_TYPE_UNIGRAM
            var normalizerName = ""
            var addDummyPrefix = true
            var removeExtraWhitespaces = true

            val model = ProtoReader(bytes, 0, bytes.size)
            while (model.hasMore()) {
                val (field, wireType) = model.readTag()
                when (field) {
                    MODEL_PIECES -> {
                        var piece = ""
                        var score = 0f
                        var type = TYPE_NORMAL
                        val m = model.readMessage()
                        while (m.hasMore()) {
                            val (f, w) = m.readTag()
                            when (f) {
                                PIECE_PIECE -> piece = m.readString()
                                PIECE_SCORE -> score = m.readFloat()
                                PIECE_TYPE -> type = m.readVarint().toInt()
                                else -> m.skip(w)
                            }
                        }
                        pieces.add(piece)
                        scores.add(score)
                        types.add(type)
                    }
                    MODEL_TRAINER_SPEC -> {
                        val m = model.readMessage()
                        while (m.hasMore()) {
                            val (f, w) = m.readTag()
                            if (f == TRAINER_MODEL_TYPE) modelType = m.readVarint().toInt() else m.skip(w)
                        }
                    }
                    MODEL_NORMALIZER_SPEC -> {
                        val m = model.readMessage()
                        while (m.hasMore()) {
                            val (f, w) = m.readTag()
                            when (f) {
                                NORMALIZER_NAME -> normalizerName = m.readString()
                                NORMALIZER_ADD_DUMMY_PREFIX -> addDummyPrefix = m.readVarint() != 0L
                                NORMALIZER_REMOVE_EXTRA_WHITESPACES -> removeExtraWhitespaces = m.readVarint() != 0L
                                else -> m.skip(w)
                            }
                        }
                    }
                    else -> model.skip(wireType)
                }
            }
            require(pieces.isNotEmpty()) { "tokenizer.model holds no pieces" }
            require(modelType == MODEL_TYPE_BPE) {
                "tokenizer.model is a SentencePiece model of type $modelType; this app implements BPE (type 2)"
            }
            require(normalizerName.isEmpty() || normalizerName == "identity") {
                "tokenizer.model uses the '$normalizerName' normalizer; this app implements 'identity' only"
            }
            return Tokenizer(
                pieces.toTypedArray(), scores.toFloatArray(), types.toIntArray(), addDummyPrefix, removeExtraWhitespaces,
            )
        }

        /** "<0x41>" -> 0x41; null for anything else. */
        internal fun parseBytePiece(piece: String): Int? {
            if (piece.length != 6 || !piece.startsWith("<0x") || !piece.endsWith(">")) return null
            return piece.substring(3, 5).toIntOrNull(16)
        }

        /**
         * Length of the longest prefix of bytes[0, length) that does not end inside a UTF-8 sequence. Malformed
         * bytes count as complete (they decode as U+FFFD), so nothing is held back forever.
         */
        internal fun completeUtf8Length(bytes: ByteArray, length: Int): Int {
            var lead = length - 1
            while (lead >= 0 && length - lead <= 4 && (bytes[lead].toInt() and 0xC0) == 0x80) lead--
            if (lead < 0 || length - lead > 4) return length
            val b = bytes[lead].toInt() and 0xFF
            val need = when {
                b < 0x80 -> 1
                b shr 5 == 0x6 -> 2
                b shr 4 == 0xE -> 3
                b shr 3 == 0x1E -> 4
                else -> 1
            }
            return if (length - lead < need) lead else length
        }
    }
}

/** Reads protobuf wire format: varints, length-delimited fields and fixed 32/64-bit values. */
internal class ProtoReader(private val buf: ByteArray, private var pos: Int, private val end: Int) {
    fun hasMore(): Boolean = pos < end

    /** (field number, wire type) */
    fun readTag(): Pair<Int, Int> {
        val tag = readVarint()
        return Pair((tag ushr 3).toInt(), (tag and 7).toInt())
    }

    fun readVarint(): Long {
        var result = 0L
        var shift = 0
        while (true) {
            require(pos < end && shift < 64) { "tokenizer.model: truncated varint" }
            val b = buf[pos++].toInt()
            result = result or ((b and 0x7F).toLong() shl shift)
            if (b and 0x80 == 0) return result
            shift += 7
        }
    }

    fun readFloat(): Float {
        require(pos + 4 <= end) { "tokenizer.model: truncated float" }
        var bits = 0
        for (k in 0 until 4) bits = bits or ((buf[pos + k].toInt() and 0xFF) shl (8 * k))
        pos += 4
        return Float.fromBits(bits)
    }

    fun readString(): String {
        val length = readLength()
        val s = String(buf, pos, length, Charsets.UTF_8)
        pos += length
        return s
    }

    fun readMessage(): ProtoReader {
        val length = readLength()
        val sub = ProtoReader(buf, pos, pos + length)
        pos += length
        return sub
    }

    fun skip(wireType: Int) {
        when (wireType) {
            0 -> readVarint()
            1 -> pos += 8
            2 -> pos += readLength()
            5 -> pos += 4
            else -> throw IllegalArgumentException("tokenizer.model: unsupported wire type $wireType")
        }
        require(pos <= end) { "tokenizer.model: truncated field" }
    }

    private fun readLength(): Int {
        val length = readVarint()
        require(length >= 0 && pos + length <= end) { "tokenizer.model: truncated field" }
        return length.toInt()
    }
}
