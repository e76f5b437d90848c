package org.bonsaiexport.demo

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.doubleOrNull
import kotlinx.serialization.json.intOrNull

/** A tokenizer.json this app cannot reproduce exactly, or one that is malformed; the message names the part. */
class TokenizerFormatException(message: String) : Exception(message)

/** How a segment gets its "▁" prefix (docs/TOKENIZER.md, step 2). */
enum class PrefixRule {
    /** The legacy normalizer Sequence[Prepend("▁"), Replace(" ", "▁")]: every segment, unconditionally. */
    LEGACY,

    /** Metaspace prepend_scheme "always": every segment that does not start with "▁" already. */
    ALWAYS,

    /** Metaspace prepend_scheme "first": only a segment at the start of the text (and not starting with "▁"). */
    FIRST,

    /** Metaspace prepend_scheme "never". */
    NEVER,
}

/** The BPE family: SentencePiece-style (byte fallback, "▁" for spaces) or byte-level (GPT-2's byte alphabet). */
enum class TokenizerKind { SENTENCE_PIECE, BYTE_LEVEL }

/** An added token: cut out of the text before anything else (all are normalized: false, no strip rules). */
class AddedToken(val id: Int, val content: String, val special: Boolean)

/** Everything Tokenizer needs from a tokenizer.json, read and checked against the subset of docs/TOKENIZER.md. */
class TokenizerParts(
    /** piece -> id (the BPE model's vocab). */
    val vocab: Map<String, Int>,
    /** pairKey(left id, right id) -> (rank shl 32) or merged id. */
    val merges: Map<Long, Long>,
    /** The BPE model's unk_token id, -1 when it has none (then a code point with no piece is dropped). */
    val unkId: Int,
    val added: List<AddedToken>,
    val prefix: PrefixRule,
    /** The post-processor's special-token ids around the text (BOS before, EOS after). */
    val before: IntArray,
    val after: IntArray,
    /** The decoder ends with Strip(" ", 1, 0): one leading space of the decoded text is dropped. */
    val stripLeadingSpace: Boolean,
    val kind: TokenizerKind = TokenizerKind.SENTENCE_PIECE,
    /** Byte-level: the pre-tokenizer's Split regex. */
    val split: SplitPattern = SplitPattern.QWEN2,
    /** Byte-level: the NFC normalizer runs before the split. */
    val nfc: Boolean = false,
    /** Byte-level: a word that is a vocab piece is taken whole, unmerged (Llama-3). */
    val ignoreMerges: Boolean = false,
)

/**
 * Reads tokenizer.json (as `tokenizers` serializes it) into TokenizerParts. Anything outside the subset raises
 * TokenizerFormatException naming the JSON path, so that an unsupported pipeline fails at load and never encodes
 * differently from the reference.
 */
object TokenizerJson {
    private const val SPACE_MARK = "\u2581"

    fun read(text: String): TokenizerParts {
        val root = try {
            Node(Json.parseToJsonElement(text))
        } catch (e: IllegalArgumentException) {
            throw TokenizerFormatException("tokenizer.json is not valid JSON: ${e.message?.lineSequence()?.first()}")
        }
        for (part in listOf("truncation", "padding")) {
            if (!root[part].isNull) root[part].refuse("set", "null (no $part)")
        }
        val model = root["model"]
        // The decoder names the family: ByteLevel for byte-level BPE, anything else is read as SentencePiece-style.
        if (root["decoder"]["type"].stringOrNull() == "ByteLevel") return readByteLevel(root)
        checkBpeOptions(model)
        val vocab = readVocab(model["vocab"])
        val (before, after) = readTemplate(root["post_processor"])
        return TokenizerParts(
            vocab = vocab,
            merges = readMerges(model["merges"], vocab),
            unkId = readUnk(model, vocab),
            added = readAddedTokens(root["added_tokens"]),
            prefix = readPrefixRule(root["normalizer"], root["pre_tokenizer"]),
            before = before,
            after = after,
            stripLeadingSpace = readDecoder(root["decoder"]),
        )
    }

    // --- byte-level BPE (Qwen2/Qwen3, Llama-3) --------------------------------------------------------------------

    private fun readByteLevel(root: Node): TokenizerParts {
        val model = root["model"]
        checkByteLevelOptions(model)
        val vocab = readVocab(model["vocab"])
        val missing = (0 until 256).firstOrNull { ByteLevel.charOf[it].toString() !in vocab }
        if (missing != null) {
            model["vocab"].refuse(
                "without a piece for byte 0x%02X".format(missing),
                "a byte-level vocabulary holding all 256 bytes",
            )
        }
        val (before, after) = readTemplate(withoutByteLevel(root["post_processor"]))
        return TokenizerParts(
            vocab = vocab,
            merges = readMerges(model["merges"], vocab),
            unkId = readUnk(model, vocab),
            added = readAddedTokens(root["added_tokens"]),
            prefix = PrefixRule.NEVER,
            before = before,
            after = after,
            stripLeadingSpace = false,
            kind = TokenizerKind.BYTE_LEVEL,
            split = readSplit(root["pre_tokenizer"]),
            nfc = readNfc(root["normalizer"]),
            ignoreMerges = model["ignore_merges"].bool() == true,
        )
    }

    /** A byte-level vocabulary holds every byte, so unk and fuse_unk never come into play. */
    private fun checkByteLevelOptions(model: Node) {
        model["type"].expectString("BPE")
        if (model["byte_fallback"].bool() == true) model["byte_fallback"].refuse("true", "false with a byte-level BPE")
        val dropout = model["dropout"]
        if (!dropout.isNull && dropout.number() != 0.0) dropout.refuse("${dropout.value}", "null (no dropout)")
        for (field in listOf("continuing_subword_prefix", "end_of_word_suffix")) {
            if (!model[field].isNull && model[field].string() != "") model[field].refuse("set", "null")
        }
        val ignore = model["ignore_merges"]
        if (!ignore.isNull && ignore.bool() == null) ignore.refuse(ignore.describe(), "a boolean")
    }

    private fun readNfc(normalizer: Node): Boolean {
        if (normalizer.isNull) return false
        if (normalizer["type"].stringOrNull() != "NFC" || normalizer.obj().size != 1) {
            normalizer.refuse(normalizer.describe(), "null or NFC with a byte-level BPE")
        }
        return true
    }

    /** Sequence[Split(a known regex, Isolated, invert false), ByteLevel(add_prefix_space false, use_regex false)]. */
    private fun readSplit(node: Node): SplitPattern {
        val expected = "Sequence[Split(the Qwen2 or Llama-3 regex, Isolated), ByteLevel(add_prefix_space false, " +
            "use_regex false)] with a byte-level BPE"
        if (node["type"].stringOrNull() != "Sequence") node.refuse(node.describe(), expected)
        val steps = node["pretokenizers"].array()
        if (steps.size != 2) node.refuse(node.describe(), expected)
        val (split, bytes) = steps
        val regex = split["pattern"]["Regex"].stringOrNull()
        val pattern = SplitPattern.values().firstOrNull { it.regex == regex } ?: node.refuse(node.describe(), expected)
        val ok = split["type"].stringOrNull() == "Split" && split["behavior"].stringOrNull() == "Isolated" &&
            split["invert"].bool() == false && bytes["type"].stringOrNull() == "ByteLevel" &&
            bytes["add_prefix_space"].bool() == false && bytes["use_regex"].bool() == false
        if (!ok) node.refuse(node.describe(), expected)
        return pattern
    }

    /** The post-processor less its ByteLevel steps, which move offsets only (never ids). */
    private fun withoutByteLevel(post: Node): Node {
        val type = post["type"].stringOrNull()
        if (type == "ByteLevel") return Node(null)
        if (type != "Sequence") return post
        val kept = post["processors"].array().filter { it["type"].stringOrNull() != "ByteLevel" }
        if (kept.size > 1) post.refuse(post.describe(), "ByteLevel steps and at most one TemplateProcessing")
        return kept.firstOrNull() ?: Node(null)
    }

    fun pairKey(left: Int, right: Int): Long = (left.toLong() shl 32) or (right.toLong() and 0xFFFFFFFFL)

    // --- model: BPE -----------------------------------------------------------------------------------------------

    private fun checkBpeOptions(model: Node) {
        model["type"].expectString("BPE")
        if (model["byte_fallback"].bool() != true) model["byte_fallback"].refuse("not true", "true")
        if (model["fuse_unk"].bool() != true) model["fuse_unk"].refuse("not true", "true")
        val dropout = model["dropout"]
        if (!dropout.isNull && dropout.number() != 0.0) dropout.refuse("${dropout.value}", "null (no dropout)")
        for (field in listOf("continuing_subword_prefix", "end_of_word_suffix")) {
            if (!model[field].isNull && model[field].string() != "") model[field].refuse("set", "null")
        }
        if (model["ignore_merges"].bool() == true) model["ignore_merges"].refuse("true", "false")
    }

    private fun readVocab(node: Node): Map<String, Int> {
        val entries = node.obj()
        val vocab = HashMap<String, Int>(entries.size * 2)
        // A Node per entry only for a bad one (its message names it): 150k-piece vocabularies load at every start.
        for ((piece, value) in entries) {
            val id = (value as? JsonPrimitive)?.takeIf { !it.isString }?.intOrNull
            vocab[piece] = if (id != null && id >= 0) id else node[piece].id()
        }
        return vocab
    }

    private fun readUnk(model: Node, vocab: Map<String, Int>): Int {
        val unk = model["unk_token"]
        if (unk.isNull) return -1
        return vocab[unk.string()] ?: unk.refuse("\"${unk.string()}\", not a vocab piece", "a piece of model.vocab")
    }

    /** Ranked merges, as ["left", "right"] pairs or "left right" strings; a pair's rank is its index. */
    private fun readMerges(node: Node, vocab: Map<String, Int>): Map<Long, Long> {
        val list = node.jsonArray()
        val merges = HashMap<Long, Long>(list.size * 2)
        for ((rank, element) in list.withIndex()) {
            val (left, right) = plainPair(element) ?: node[rank].mergePair()
            val merge by lazy { node[rank] } // for messages only
            val leftId = vocab[left] ?: merge.refuse("\"$left\", not in the vocab", "pieces of model.vocab")
            val rightId = vocab[right] ?: merge.refuse("\"$right\", not in the vocab", "pieces of model.vocab")
            val merged = vocab[left + right] ?: merge.refuse("\"$left$right\", not in the vocab", "a vocab piece")
            // A repeated pair keeps its last rank, as tokenizers' map does.
            merges[pairKey(leftId, rightId)] = (rank.toLong() shl 32) or merged.toLong()
        }
        return merges
    }

    /** ["left", "right"] read without a Node (the common form, 150k of them in a Qwen2 file), else null. */
    private fun plainPair(element: JsonElement): Pair<String, String>? {
        val pair = element as? JsonArray ?: return null
        if (pair.size != 2) return null
        val left = (pair[0] as? JsonPrimitive)?.takeIf { it.isString } ?: return null
        val right = (pair[1] as? JsonPrimitive)?.takeIf { it.isString } ?: return null
        return Pair(left.content, right.content)
    }

    private fun Node.mergePair(): Pair<String, String> {
        val v = value
        if (v is JsonArray && v.size == 2) return Pair(this[0].string(), this[1].string())
        val parts = if (v is JsonPrimitive && v.isString) v.content.split(' ') else emptyList()
        if (parts.size != 2) refuse("$v", "[\"left\", \"right\"] or \"left right\"")
        return Pair(parts[0], parts[1])
    }

    // --- normalizer and pre_tokenizer -----------------------------------------------------------------------------

    /** LEGACY for the legacy normalizer (the only normalizer of the subset), else Metaspace's prepend_scheme. */
    private fun readPrefixRule(normalizer: Node, preTokenizer: Node): PrefixRule {
        val legacy = !normalizer.isNull
        if (legacy) checkLegacyNormalizer(normalizer)
        if (preTokenizer.isNull) {
            if (!legacy) preTokenizer.refuse("null with no normalizer", "Metaspace, or null with the legacy normalizer")
            return PrefixRule.LEGACY
        }
        if (legacy) normalizer.refuse("set together with a pre_tokenizer", "null when pre_tokenizer is Metaspace")
        preTokenizer["type"].expectString("Metaspace")
        preTokenizer["replacement"].expectString(SPACE_MARK)
        if (preTokenizer["split"].bool() != false) preTokenizer["split"].refuse("not false", "false")
        val scheme = preTokenizer["prepend_scheme"]
        return when (scheme.string()) {
            "first" -> PrefixRule.FIRST
            "always" -> PrefixRule.ALWAYS
            "never" -> PrefixRule.NEVER
            else -> scheme.refuse("\"${scheme.string()}\"", "first, always or never")
        }
    }

    private fun checkLegacyNormalizer(normalizer: Node) {
        val expected = "Sequence[Prepend(\"▁\"), Replace(\" \", \"▁\")] or null"
        if (normalizer["type"].stringOrNull() != "Sequence") normalizer.refuse(normalizer.describe(), expected)
        val steps = normalizer["normalizers"].array()
        val ok = steps.size == 2 &&
            steps[0]["type"].stringOrNull() == "Prepend" && steps[0]["prepend"].stringOrNull() == SPACE_MARK &&
            steps[1].isStringReplace(" ", SPACE_MARK)
        if (!ok) normalizer.refuse(normalizer.describe(), expected)
    }

    private fun Node.isStringReplace(from: String, to: String): Boolean =
        this["type"].stringOrNull() == "Replace" && this["pattern"]["String"].stringOrNull() == from &&
            this["content"].stringOrNull() == to

    // --- added tokens, post-processor, decoder --------------------------------------------------------------------

    private fun readAddedTokens(node: Node): List<AddedToken> {
        if (node.isNull) return emptyList()
        return node.array().map { t ->
            for (flag in listOf("lstrip", "rstrip", "single_word", "normalized")) {
                if (t[flag].bool() != false) t[flag].refuse("not false", "false")
            }
            val content = t["content"].string()
            if (content.isEmpty()) t["content"].refuse("empty", "a non-empty string")
            AddedToken(t["id"].id(), content, t["special"].bool() == true)
        }
    }

    /** The ids TemplateProcessing's `single` puts before and after `$A`. */
    private fun readTemplate(node: Node): Pair<IntArray, IntArray> {
        if (node.isNull) return Pair(IntArray(0), IntArray(0))
        node["type"].expectString("TemplateProcessing")
        val before = ArrayList<Int>()
        val after = ArrayList<Int>()
        var seenText = false
        for (piece in node["single"].array()) {
            val sequence = piece["Sequence"]
            if (!sequence.isNull) {
                if (seenText || sequence["id"].stringOrNull() != "A") {
                    piece.refuse(piece.describe(), "special tokens, one \$A, special tokens")
                }
                seenText = true
                continue
            }
            val name = piece["SpecialToken"]["id"].string()
            val ids = node["special_tokens"][name]["ids"].array().map { it.id() }
            (if (seenText) after else before).addAll(ids)
        }
        if (!seenText) node["single"].refuse("without \$A", "special tokens, one \$A, special tokens")
        return Pair(before.toIntArray(), after.toIntArray())
    }

    /** Sequence[Replace("▁", " "), ByteFallback, Fuse] (+ Strip(" ", 1, 0)); returns whether the Strip is there. */
    private fun readDecoder(node: Node): Boolean {
        val expected = "Sequence[Replace(\"▁\", \" \"), ByteFallback, Fuse] optionally + Strip(\" \", 1, 0)"
        if (node["type"].stringOrNull() != "Sequence") node.refuse(node.describe(), expected)
        val steps = node["decoders"].array()
        val core = steps.size in 3..4 && steps[0].isStringReplace(SPACE_MARK, " ") &&
            steps[1]["type"].stringOrNull() == "ByteFallback" && steps[2]["type"].stringOrNull() == "Fuse"
        if (!core) node.refuse(node.describe(), expected)
        if (steps.size == 3) return false
        val strip = steps[3]
        val isStrip = strip["type"].stringOrNull() == "Strip" && strip["content"].stringOrNull() == " " &&
            strip["start"].intOrNull() == 1 && strip["stop"].intOrNull() == 0
        if (!isStrip) node.refuse(node.describe(), expected)
        return true
    }

    // --- a JSON value and where it is, for messages ---------------------------------------------------------------

    /** A JSON value and where it is; the path is built only for a message (60k merges are read per load). */
    private class Node(val value: JsonElement?, private val parent: Node? = null, private val key: Any? = null) {
        val isNull: Boolean get() = value == null || value is JsonNull

        val path: String
            get() = when {
                parent == null -> ""
                key is Int -> "${parent.path}[$key]"
                parent.path.isEmpty() -> "$key"
                else -> "${parent.path}.$key"
            }

        operator fun get(field: String): Node = Node((value as? JsonObject)?.get(field), this, field)

        operator fun get(index: Int): Node = Node((value as? JsonArray)?.getOrNull(index), this, index)

        fun obj(): JsonObject = value as? JsonObject ?: refuse(kind(), "an object")

        fun array(): List<Node> = jsonArray().indices.map { this[it] }

        fun jsonArray(): JsonArray = value as? JsonArray ?: refuse(kind(), "an array")

        fun string(): String = stringOrNull() ?: refuse(kind(), "a string")

        fun stringOrNull(): String? = (value as? JsonPrimitive)?.takeIf { it.isString }?.content

        fun int(): Int = intOrNull() ?: refuse(kind(), "an integer")

        /** A token id: an integer >= 0. */
        fun id(): Int = int().also { if (it < 0) refuse("$it", "an id >= 0") }

        fun intOrNull(): Int? = (value as? JsonPrimitive)?.takeIf { !it.isString }?.intOrNull

        fun number(): Double =
            (value as? JsonPrimitive)?.takeIf { !it.isString }?.doubleOrNull ?: refuse(kind(), "a number")

        fun bool(): Boolean? = (value as? JsonPrimitive)?.takeIf { !it.isString }?.booleanOrNull

        fun expectString(expected: String) {
            if (stringOrNull() != expected) refuse(if (isNull) "missing" else "$value", "\"$expected\"")
        }

        /** "Sequence[Prepend, Replace]"-style summary of a pipeline part, for messages. */
        fun describe(): String {
            val type = this["type"].stringOrNull() ?: return kind()
            val children = listOf("normalizers", "pretokenizers", "decoders", "processors")
                .firstOrNull { this[it].value is JsonArray } ?: return type
            return "$type[" + this[children].array().joinToString(", ") { it.describe() } + "]"
        }

        fun refuse(got: String, expected: String): Nothing = throw TokenizerFormatException(
            "tokenizer.json: ${path.ifEmpty { "the file" }} is $got; this app implements $expected " +
                "(the subset of docs/TOKENIZER.md)",
        )

        private fun kind(): String = when (value) {
            null -> "missing"
            is JsonNull -> "null"
            is JsonObject -> "an object"
            is JsonArray -> "an array"
            else -> "$value"
        }
    }
}
