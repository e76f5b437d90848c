package org.bonsaiexport.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File

/**
 * JVM tests of the tokenizer (`./gradlew test`, and tests/test_kotlin_jvm.py without Gradle). A small
 * tokenizer.json written here checks the rules of docs/TOKENIZER.md one by one; Bonsai's exported tokenizer.json
 * (set BONSAI_TOKENIZER_JSON to it) checks the ids below, which the repository's Python tests check against
 * transformers. tests/test_kotlin_jvm.py compares every layout and the whole corpus with transformers.
 */
class TokenizerTest {
    private fun pieces(tok: Tokenizer, text: String): List<String?> =
        tok.encode(text, addSpecialTokens = false).map(tok::piece)

    @Test
    fun mergesByRankNotByLength() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        // (b, c) has the lowest rank, so "▁abc" never becomes "▁ab" + "c"
        assertEquals(listOf("▁a", "bc"), pieces(tok, "abc"))
        assertEquals(listOf("▁ab"), pieces(tok, "ab"))
        assertArrayEquals(intArrayOf(BOS, tok.encode("ab", addSpecialTokens = false)[0]), tok.encode("ab"))
    }

    @Test
    fun codePointsWithoutPieceFallBackToBytes() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        assertEquals(listOf("▁a", "<0xC3>", "<0xA9>"), pieces(tok, "aé"))
        assertEquals("aé", tok.decode(tok.encode("aé")))
        assertEquals("ab c", tok.decode(tok.encode("ab c")))
    }

    @Test
    fun addedTokensAreCutLeftmostLongest() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        // "<x><y>" wins over "<x>"; the segment after it is not at offset 0: no "▁" (prepend_scheme first)
        assertEquals(listOf("▁a", "<x><y>", "b"), pieces(tok, "a<x><y>b"))
        assertEquals(listOf("<x>", "b"), pieces(tok, "<x>b"))
        assertEquals(listOf("▁a", "<s>", "▁", "b"), pieces(tok, "a<s> b"))
        // special tokens vanish from the text, other added tokens stay
        assertEquals("a<x><y>b", tok.decode(tok.encode("a<x><y>b")))
        assertEquals("ab", tok.decode(tok.encode("a</s>b")))
    }

    @Test
    fun prefixSchemes() {
        val always = Tokenizer.parse(smallTokenizerJson(preTokenizer = metaspace("always")))
        assertEquals(listOf("▁a", "<s>", "▁", "b"), pieces(always, "a<s>b"))
        assertEquals(listOf("▁a"), pieces(always, " a"))
        val never = Tokenizer.parse(smallTokenizerJson(preTokenizer = metaspace("never")))
        assertEquals(listOf("ab"), pieces(never, "ab"))
        // the legacy normalizer prepends even to a segment that starts with a space
        val legacy = Tokenizer.parse(smallTokenizerJson(normalizer = LEGACY_NORMALIZER, preTokenizer = "null"))
        assertEquals(listOf("▁", "▁a"), pieces(legacy, " a"))
        assertEquals(listOf("▁a", "<s>", "▁", "b"), pieces(legacy, "a<s>b"))
    }

    @Test
    fun emptyTextIsTheTemplateOnly() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        assertArrayEquals(intArrayOf(BOS), tok.encode(""))
        assertEquals(0, tok.encode("", addSpecialTokens = false).size)
    }

    @Test
    fun streamHoldsBackByteRuns() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        val stream = tok.streamDecoder()
        val ids = tok.encode("aéb")
        assertEquals(listOf("", "a", "", "", "éb", ""), ids.map { stream.push(it) } + stream.flush())
    }

    @Test
    fun invalidByteRunsDecodeAsOneReplacementPerByte() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        // "▁a", then the first byte of é alone, "b", then the second byte alone: both runs are invalid UTF-8
        val ids = listOf("▁a", "<0xC3>", "b", "<0xA9>").map { PIECES.indexOf(it) }.toIntArray()
        assertEquals("a\uFFFDb\uFFFD", tok.decode(ids))
    }

    @Test
    fun streamAfterPromptKeepsTheFirstSpace() {
        val tok = Tokenizer.parse(smallTokenizerJson())
        val next = PIECES.indexOf("▁a")
        assertEquals(" a", tok.streamDecoder(tok.encode("ab")).push(next))
        assertEquals("a", tok.streamDecoder(tok.encode("")).push(next))
    }

    @Test
    fun refusesPipelinesOutsideTheSubset() {
        val cases = mapOf(
            "pre_tokenizer.type" to smallTokenizerJson(preTokenizer = """{"type": "ByteLevel"}"""),
            "model.dropout" to smallTokenizerJson().replace("\"dropout\": null", "\"dropout\": 0.1"),
            "added_tokens[0].lstrip" to smallTokenizerJson().replace("\"lstrip\": false", "\"lstrip\": true"),
            "normalizer" to smallTokenizerJson(normalizer = """{"type": "NFKC"}""", preTokenizer = "null"),
            "decoder" to smallTokenizerJson().replace("\"stop\": 0", "\"stop\": 1"),
            "truncation" to smallTokenizerJson().replace("\"truncation\": null", "\"truncation\": {}"),
        )
        for ((part, json) in cases) {
            val e = assertThrows(TokenizerFormatException::class.java) { Tokenizer.parse(json) }
            assertTrue("${e.message} names $part", e.message!!.contains("tokenizer.json: $part "))
        }
    }

    @Test
    fun byteLevelSplitFollowsTheRegexes() {
        fun qwen(text: String) = ByteLevel.split(text, SplitPattern.QWEN2)
        assertEquals(listOf("it", "'s", " ", "1", "2", " ", " ", "3"), qwen("it's 12  3"))
        assertEquals(listOf("a", " ", " b"), qwen("a  b"))
        assertEquals(listOf("'S", "a", " '", "ſ"), qwen("'Sa 'ſ"))
        assertEquals(listOf(" \r\n", " x"), qwen(" \r\n x"))
        assertEquals(listOf("!!!\n\n", "x", "   "), qwen("!!!\n\nx   "))
        assertEquals(listOf("\u00a0nbsp"), qwen("\u00a0nbsp"))
        assertEquals(listOf("123", "45", " x"), ByteLevel.split("12345 x", SplitPattern.LLAMA3))
    }

    @Test
    fun byteLevelEncodesBytesAfterNfc() {
        val tok = Tokenizer.parse(byteLevelTokenizerJson())
        assertArrayEquals(intArrayOf(256), tok.encode(" a"))
        // e + U+0301 is é after NFC: its two UTF-8 bytes, each its alphabet character's id (the byte itself here)
        assertArrayEquals(intArrayOf(0xC3, 0xA9), tok.encode("e\u0301"))
        assertArrayEquals(intArrayOf('x'.code, 257, 258), tok.encode("x<|im_end|><think>"))
        assertEquals("x<think>", tok.decode(tok.encode("x<|im_end|><think>")))
    }

    @Test
    fun byteLevelDecodesLossilyAndStreamsWholeCharacters() {
        val tok = Tokenizer.parse(byteLevelTokenizerJson())
        assertEquals("\uFFFD", tok.decode(intArrayOf(0xE6, 0x97)))  // one maximal ill-formed part
        assertEquals("\uFFFD\uFFFDa", tok.decode(intArrayOf(0xC0, 0x80, 'a'.code)))
        val stream = tok.streamDecoder()
        assertEquals(listOf("", "", "日", "", "<think>", ""),
            listOf(0xE6, 0x97, 0xA5, 257, 258).map { stream.push(it) } + stream.flush())
        val cut = tok.streamDecoder()
        assertEquals(listOf("a", "", "\uFFFD"), listOf('a'.code, 0xE6).map { cut.push(it) } + cut.flush())
    }

    @Test
    fun bonsaiTokenizerMatchesTransformers() {
        val path = System.getenv("BONSAI_TOKENIZER_JSON")
        assumeTrue("set BONSAI_TOKENIZER_JSON to an exported Bonsai tokenizer.json", path != null && File(path).isFile)
        val tok = Tokenizer.load(File(path!!))
        for ((text, ids) in BONSAI_EXAMPLES) {
            assertArrayEquals(text, ids, tok.encode(text))
            assertEquals(text, tok.decode(ids))
        }
    }

    companion object {
        const val BOS = 1

        /** (text, ids) with Bonsai's (Mistral v1's) exported tokenizer; checked against transformers in Python. */
        val BONSAI_EXAMPLES = listOf(
            "Hello world" to intArrayOf(1, 22557, 1526),
            "The capital of France is" to intArrayOf(1, 415, 5565, 302, 4843, 349),
            "naïve café 日本語 🙂" to intArrayOf(1, 1879, 28920, 333, 28345, 28705, 29142, 29119, 30321, 28705, 29340),
            "a  b   c" to intArrayOf(1, 264, 28705, 287, 259, 277),
        )

        const val LEGACY_NORMALIZER = """{"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}"""

        fun metaspace(scheme: String): String =
            """{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "$scheme", "split": false}"""

        /**
         * A byte-level tokenizer.json (Qwen2's layout): the 256 alphabet characters with ids equal to their bytes,
         * "Ġa" (a space and a) by one merge, <|im_end|> special and <think> not, NFC and the Qwen2 regex.
         */
        fun byteLevelTokenizerJson(): String {
            fun str(s: String) = kotlinx.serialization.json.JsonPrimitive(s).toString()
            val vocab = (0 until 256).joinToString(", ") { "${str(ByteLevel.charOf[it].toString())}: $it" } +
                ", \"Ġa\": 256"
            fun added(id: Int, content: String, special: Boolean) = """{"id": $id, "content": "$content",
                "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": $special}"""
            return """{"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [${added(257, "<|im_end|>", true)}, ${added(258, "<think>", false)}],
                "normalizer": {"type": "NFC"},
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": ${str(SplitPattern.QWEN2.regex)}}, "behavior": "Isolated",
                     "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
                "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                    "use_regex": false},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                    "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": {$vocab}, "merges": [["Ġ", "a"]]}}"""
        }

        /**
         * A tokenizer.json as `tokenizers` writes one: <unk> <s> </s>, the 256 byte pieces, a few pieces and
         * ranked merges, two non-special added tokens (<x> and <x><y>), BOS by the post-processor.
         */
        /** The small tokenizer's pieces; a piece's id is its index. */
        val PIECES = listOf("<unk>", "<s>", "</s>") + (0 until 256).map { String.format("<0x%02X>", it) } +
            listOf("▁", "a", "b", "c", "ab", "bc", "▁a", "▁ab", "<x>", "<x><y>")

        fun smallTokenizerJson(normalizer: String = "null", preTokenizer: String = metaspace("first")): String {
            val vocab = PIECES.withIndex().joinToString(", ") { (id, p) -> "\"$p\": $id" }
            val merges = listOf("b" to "c", "▁" to "a", "a" to "b", "▁a" to "b")
                .joinToString(", ") { (l, r) -> "[\"$l\", \"$r\"]" }
            fun added(content: String, special: Boolean) = """{"id": ${PIECES.indexOf(content)},
                "content": "$content", "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": $special}"""
            val addedTokens = listOf(added("<unk>", true), added("<s>", true), added("</s>", true),
                added("<x>", false), added("<x><y>", false))
            return """{"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [${addedTokens.joinToString(", ")}],
                "normalizer": $normalizer, "pre_tokenizer": $preTokenizer,
                "post_processor": {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": {$vocab}, "merges": [$merges]}}"""
        }
    }
}
