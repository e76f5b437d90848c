package org.bonsaiexport.demo

import java.io.ByteArrayOutputStream

/** The pre-tokenizer regexes of the byte-level layouts the app implements, as tokenizer.json spells them. */
enum class SplitPattern(val regex: String) {
    /** Qwen2 / Qwen3: digits one at a time. */
    QWEN2(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" +
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),

    /** Llama-3: digits up to three at a time. */
    LLAMA3(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" +
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
}

/**
 * Byte-level BPE's pieces (docs/TOKENIZER.md, "Byte-level BPE"): GPT-2's byte alphabet, the Split regexes as plain
 * code (each alternative tried in order with the backtracking the regex engine of `tokenizers` does; the same
 * derivation as custom_ops/runner/pretokenize.cpp), and lossy UTF-8 as the ByteLevel decoder ends. Unicode
 * classes come from java.lang.Character, so no regex engine's dialect matters.
 */
object ByteLevel {
    /** Byte b -> its alphabet character: printable Latin-1 bytes are themselves, the other 68 take U+0100 on. */
    val charOf: CharArray = CharArray(256).also { chars ->
        var next = 0x100
        for (b in 0 until 256) {
            val printable = b in 0x21..0x7E || b in 0xA1..0xAC || b >= 0xAE
            chars[b] = if (printable) b.toChar() else (next++).toChar()
        }
    }

    private val byteOf = IntArray(0x144) { -1 }.also { bytes -> for (b in 0 until 256) bytes[charOf[b].code] = b }

    /** The alphabet text of some bytes: the vocabulary piece they are when unmerged. */
    fun text(bytes: ByteArray): String = String(CharArray(bytes.size) { charOf[bytes[it].toInt() and 0xFF] })

    /** The bytes a token stands for: its alphabet characters' bytes, or its own UTF-8 when it has others. */
    fun bytes(token: String): ByteArray {
        val out = ByteArray(token.length)
        for ((i, c) in token.withIndex()) {
            val b = if (c.code < byteOf.size) byteOf[c.code] else -1
            if (b < 0) return token.toByteArray(Charsets.UTF_8)
            out[i] = b.toByte()
        }
        return out
    }

    /** The words Split(pattern, Isolated) cuts `text` into: every match one word, the matches covering the text. */
    fun split(text: String, pattern: SplitPattern): List<String> {
        val cps = text.codePoints().toArray()
        val words = ArrayList<String>()
        var i = 0
        while (i < cps.size) {
            val end = maxOf(matchAt(cps, i, pattern), i + 1)
            words.add(String(cps, i, end - i))
            i = end
        }
        return words
    }

    private fun isLetter(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.UPPERCASE_LETTER, Character.LOWERCASE_LETTER, Character.TITLECASE_LETTER,
        Character.MODIFIER_LETTER, Character.OTHER_LETTER -> true
        else -> false
    }

    private fun isNumber(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.DECIMAL_DIGIT_NUMBER, Character.LETTER_NUMBER, Character.OTHER_NUMBER -> true
        else -> false
    }

    /** \s: the White_Space property (Character.isWhitespace differs: it leaves out no-break spaces). */
    private fun isSpace(cp: Int): Boolean =
        cp in 0x09..0x0D || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 || cp in 0x2000..0x200A ||
            cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000

    private fun isOther(cp: Int) = !isSpace(cp) && !isLetter(cp) && !isNumber(cp)

    private fun isNewline(cp: Int) = cp == '\r'.code || cp == '\n'.code

    /** (?i:...) on the contraction letters: ASCII case, and U+017F LONG S, which case-folds to 's'. */
    private fun fold(cp: Int): Int = if (cp in 'A'.code..'Z'.code) cp + 32 else if (cp == 0x17F) 's'.code else cp

    private fun matchAt(c: IntArray, i: Int, pattern: SplitPattern): Int {
        contraction(c, i).let { if (it > i) return it }
        word(c, i).let { if (it > i) return it }
        if (isNumber(c[i])) {
            var j = i + 1
            if (pattern == SplitPattern.LLAMA3) while (j < c.size && j < i + 3 && isNumber(c[j])) j++
            return j
        }
        punctuation(c, i).let { if (it > i) return it }
        return spaces(c, i) // every other character is white space
    }

    /** (?i:'s|'t|'re|'ve|'m|'ll|'d): the end of the match at i, or i. */
    private fun contraction(c: IntArray, i: Int): Int {
        if (c[i] != '\''.code || i + 1 >= c.size) return i
        val a = fold(c[i + 1]).toChar()
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2
        val b = if (i + 2 < c.size) fold(c[i + 2]).toChar() else ' '
        return if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) i + 3 else i
    }

    /** [^\r\n\p{L}\p{N}]?\p{L}+: the optional lead counts only when a letter follows it. */
    private fun word(c: IntArray, i: Int): Int {
        var j = i
        if (!isLetter(c[j]) && !isNumber(c[j]) && !isNewline(c[j])) j++
        if (j >= c.size || !isLetter(c[j])) return i
        while (j < c.size && isLetter(c[j])) j++
        return j
    }

    /** ` ?[^\s\p{L}\p{N}]+[\r\n]*` */
    private fun punctuation(c: IntArray, i: Int): Int {
        var j = if (c[i] == ' '.code) i + 1 else i
        if (j >= c.size || !isOther(c[j])) return i
        while (j < c.size && isOther(c[j])) j++
        while (j < c.size && isNewline(c[j])) j++
        return j
    }

    /**
     * \s*[\r\n]+|\s+(?!\S)|\s+ over the white space run [i, end): the first backtracks to the run's last \r or \n;
     * the second takes the run at the end of the text, else all of it but its last character (when that leaves
     * one); the third the whole run.
     */
    private fun spaces(c: IntArray, i: Int): Int {
        var end = i
        while (end < c.size && isSpace(c[end])) end++
        for (k in end downTo i + 1) if (isNewline(c[k - 1])) return k
        return if (end == c.size || end - i < 2) end else end - 1
    }

    /**
     * Rust's String::from_utf8_lossy (the ByteLevel decoder's last step): each maximal ill-formed subpart (a lead
     * byte with the continuation bytes that still fit a well-formed sequence, or one stray byte) becomes one U+FFFD.
     */
    fun lossyUtf8(bytes: ByteArray, from: Int = 0, to: Int = bytes.size): String {
        val out = StringBuilder(to - from)
        var i = from
        while (i < to) {
            val n = sequenceLength(bytes, i, to)
            if (n > 0) {
                out.append(String(bytes, i, n, Charsets.UTF_8))
                i += n
            } else {
                out.append('\uFFFD')
                i += maxOf(1, validPrefix(bytes, i, to))
            }
        }
        return out.toString()
    }

    /** How many bytes at i form a proper prefix of a well-formed sequence that the text cuts short or breaks. */
    fun validPrefix(bytes: ByteArray, i: Int, to: Int): Int {
        val need = expected(bytes[i].toInt() and 0xFF)
        if (need < 2 || i + 1 >= to || !secondFits(bytes[i].toInt() and 0xFF, bytes[i + 1].toInt() and 0xFF)) {
            return if (need >= 2 && i + 1 >= to) 1 else 0
        }
        var len = 2
        while (len < need && i + len < to && (bytes[i + len].toInt() and 0xC0) == 0x80) len++
        return if (len < need) len else 0
    }

    /** The length of the well-formed sequence at i (Unicode Table 3-7), or 0. */
    private fun sequenceLength(bytes: ByteArray, i: Int, to: Int): Int {
        val lead = bytes[i].toInt() and 0xFF
        val need = expected(lead)
        if (need == 1) return if (lead < 0x80) 1 else 0
        if (i + need > to || !secondFits(lead, bytes[i + 1].toInt() and 0xFF)) return 0
        for (k in 2 until need) if ((bytes[i + k].toInt() and 0xC0) != 0x80) return 0
        return need
    }

    private fun expected(lead: Int): Int = when (lead) {
        in 0xC2..0xDF -> 2
        in 0xE0..0xEF -> 3
        in 0xF0..0xF4 -> 4
        else -> 1
    }

    private fun secondFits(lead: Int, second: Int): Boolean {
        val lo = if (lead == 0xE0) 0xA0 else if (lead == 0xF0) 0x90 else 0x80
        val hi = if (lead == 0xED) 0x9F else if (lead == 0xF4) 0x8F else 0xBF
        return second in lo..hi
    }

    /** A growable byte buffer for the stream decoder. */
    internal class Bytes : ByteArrayOutputStream() {
        fun array(): ByteArray = buf

        fun dropFirst(n: Int) {
            System.arraycopy(buf, n, buf, 0, count - n)
            count -= n
        }
    }
}
