package org.bonsaiexport.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.ByteArrayOutputStream
import java.io.File

/**
 * JVM tests of the tokenizer (`./gradlew test`). A small model written here checks the BPE rules; Bonsai's own
 * tokenizer.model (set BONSAI_TOKENIZER_MODEL to it) checks the ids below, which the repository's Python tests
 * check against sentencepiece itself.
 */
class TokenizerTest {
    @Test
    fun mergesByScoreAndFallsBackToBytes() {
        val tok = Tokenizer.parse(smallModel())
        // "▁ab" beats "ab" and "▁a"; "é" is not a piece: its two UTF-8 bytes.
        assertEquals(listOf("▁ab", "c"), tok.encode("abc").map(tok::piece))
        assertEquals(listOf("▁ab", "<0xC3>", "<0xA9>"), tok.encode("abé").map(tok::piece))
        assertEquals("abé", tok.decode(tok.encode("abé")))
        assertEquals("ab c", tok.decode(tok.encode("ab c")))
    }

    @Test
    fun streamHoldsBackIncompleteCharacters() {
        val tok = Tokenizer.parse(smallModel())
        val stream = tok.StreamDecoder()
        val ids = tok.encode("abé")
        assertEquals("ab", stream.push(ids[0]))
        assertEquals("", stream.push(ids[1]))
        assertEquals("é", stream.push(ids[2]))
        assertEquals("", stream.flush())
    }

    @Test
    fun emptyTextHasNoTokens() {
        assertEquals(0, Tokenizer.parse(smallModel()).encode("").size)
    }

    @Test
    fun bonsaiTokenizerMatchesSentencePiece() {
        val path = System.getenv("BONSAI_TOKENIZER_MODEL")
        assumeTrue("set BONSAI_TOKENIZER_MODEL to Bonsai's tokenizer.model", path != null && File(path).isFile)
        val tok = Tokenizer.load(File(path!!))
        for ((text, ids) in BONSAI_EXAMPLES) {
            assertArrayEquals(text, ids, tok.encode(text))
            assertEquals(text, tok.decode(ids))
        }
    }

    companion object {
        /** (text, ids) with Bonsai's (Mistral v1's) tokenizer; verified against sentencepiece by the Python tests. */
        val BONSAI_EXAMPLES = listOf(
            "Hello world" to intArrayOf(22557, 1526),
            "The capital of France is" to intArrayOf(415, 5565, 302, 4843, 349),
            "naïve café 日本語 🙂" to intArrayOf(1879, 28920, 333, 28345, 28705, 29142, 29119, 30321, 28705, 29340),
        )

        /** A BPE ModelProto: <unk>, <s>, </s>, the 256 byte pieces, then a few scored pieces. */
        fun smallModel(): ByteArray {
            val out = ByteArrayOutputStream()
            fun piece(text: String, score: Float, type: Int) {
                val body = ByteArrayOutputStream()
                body.field(Tokenizer.PIECE_PIECE, text.toByteArray())
                body.fixed32(Tokenizer.PIECE_SCORE, score.toRawBits())
                body.varint(Tokenizer.PIECE_TYPE, type.toLong())
                out.field(Tokenizer.MODEL_PIECES, body.toByteArray())
            }
            piece("<unk>", 0f, Tokenizer.TYPE_UNKNOWN)
            piece("<s>", 0f, Tokenizer.TYPE_CONTROL)
            piece("</s>", 0f, Tokenizer.TYPE_CONTROL)
            for (b in 0 until 256) piece(String.format("<0x%02X>", b), 0f, Tokenizer.TYPE_BYTE)
            for ((i, p) in listOf("▁ab", "ab", "▁a", "▁", "a", "b", "c").withIndex()) {
                piece(p, -i.toFloat(), Tokenizer.TYPE_NORMAL)
            }
            val trainer = ByteArrayOutputStream().apply {
                varint(Tokenizer.TRAINER_MODEL_TYPE, Tokenizer.MODEL_TYPE_BPE.toLong())
            }
            out.field(Tokenizer.MODEL_TRAINER_SPEC, trainer.toByteArray())
            val normalizer = ByteArrayOutputStream().apply {
                field(Tokenizer.NORMALIZER_NAME, "identity".toByteArray())
                varint(Tokenizer.NORMALIZER_ADD_DUMMY_PREFIX, 1)
                varint(Tokenizer.NORMALIZER_REMOVE_EXTRA_WHITESPACES, 0)
            }
            out.field(Tokenizer.MODEL_NORMALIZER_SPEC, normalizer.toByteArray())
            return out.toByteArray()
        }

        private fun ByteArrayOutputStream.rawVarint(value: Long) {
            var v = value
            while (v and 0x7FL.inv() != 0L) {
                write(((v and 0x7F) or 0x80).toInt())
                v = v ushr 7
            }
            write(v.toInt())
        }

        private fun ByteArrayOutputStream.varint(field: Int, value: Long) {
            rawVarint((field shl 3).toLong())
            rawVarint(value)
        }

        private fun ByteArrayOutputStream.field(field: Int, bytes: ByteArray) {
            rawVarint(((field shl 3) or 2).toLong())
            rawVarint(bytes.size.toLong())
            write(bytes)
        }

        private fun ByteArrayOutputStream.fixed32(field: Int, bits: Int) {
            rawVarint(((field shl 3) or 5).toLong())
            for (k in 0 until 4) write((bits ushr (8 * k)) and 0xFF)
        }
    }
}
