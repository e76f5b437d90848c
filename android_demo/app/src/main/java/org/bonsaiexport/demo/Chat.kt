package org.bonsaiexport.demo

/** One message of a conversation: role "system", "user" or "assistant". */
data class ChatMessage(val role: String, val content: String)

/**
 * The ChatML prompt format (Qwen2/Qwen3), written out in code: the app has no Jinja engine to run the artifact's
 * chat_template. For plain text messages it renders what Qwen3's template renders: each message as
 * `<|im_start|>{role}\n{content}<|im_end|>\n`, then the assistant header when an answer is wanted, followed by an
 * empty think block when thinking is switched off. Answers before the last user message lose their thinking (the
 * text up to the last `</think>` and the newlines after it), as Qwen3's template drops it.
 * `bonsai-export chat` renders the artifact's own template (bonsai_export/chat.py); tests/test_chat.py checks this
 * class's output against it.
 */
object ChatMl {
    const val IM_START = "<|im_start|>"
    const val IM_END = "<|im_end|>"
    private const val THINK_END = "</think>"
    private const val NO_THINKING = "<think>\n\n</think>\n\n"

    /** A model whose tokenizer holds ChatML's two markers as single tokens. */
    fun supported(tokenizer: Tokenizer): Boolean = tokenId(tokenizer, IM_START) != null && stopId(tokenizer) != null

    /** <|im_end|>'s id: an answer ends there even where the model's EOS ids name another token. */
    fun stopId(tokenizer: Tokenizer): Int? = tokenId(tokenizer, IM_END)

    private fun tokenId(tokenizer: Tokenizer, piece: String): Int? =
        tokenizer.encode(piece, addSpecialTokens = false).singleOrNull()?.takeIf { tokenizer.piece(it) == piece }

    /** The conversation as text; `thinking` null leaves the switch at the model's default (it thinks). */
    fun render(messages: List<ChatMessage>, addGenerationPrompt: Boolean = true, thinking: Boolean? = null): String =
        buildString {
            val lastUser = messages.indexOfLast { it.role == "user" }
            for ((i, m) in messages.withIndex()) {
                require(m.role in ROLES) { "unknown role ${m.role}" }
                val content = if (m.role == "assistant" && i < lastUser) withoutThinking(m.content) else m.content
                append(IM_START).append(m.role).append('\n').append(content).append(IM_END).append('\n')
            }
            if (addGenerationPrompt) {
                append(IM_START).append("assistant\n")
                if (thinking == false) append(NO_THINKING)
            }
        }

    fun withoutThinking(answer: String): String {
        val end = answer.lastIndexOf(THINK_END)
        return if (end < 0) answer else answer.substring(end + THINK_END.length).trimStart('\n')
    }

    private val ROLES = setOf("system", "user", "assistant")
}

class ChatContextFullException(message: String) : IllegalArgumentException(message)

/** A turn about to run: the whole conversation's prompt ids, of which the first `keep` are already in the cache. */
class ChatTurn(val messages: List<ChatMessage>, val promptIds: IntArray, val keep: Int)

/**
 * A conversation over one KV cache; `cached` mirrors the cache (position i holds cached[i]). Each turn renders the
 * whole conversation and runs only the tokens after the longest prefix the cache holds: the new turn, or, where an
 * answer's text encodes to other ids than were generated (or the history was rewritten), from where they part.
 * Context full: the turn is refused (ChatContextFullException, the conversation unchanged); newChat() starts over.
 */
class Conversation(private val system: String? = null) {
    var messages: List<ChatMessage> = emptyList()
        private set
    var cached: IntArray = IntArray(0)
        private set

    init {
        newChat()
    }

    fun newChat() {
        messages = if (system.isNullOrEmpty()) emptyList() else listOf(ChatMessage("system", system))
        cached = IntArray(0)
    }

    /** The next turn for `user`'s message; `encode` gives the ids of rendered text (no BOS/EOS added). */
    fun prepare(user: String, thinking: Boolean?, contextLength: Int, encode: (String) -> IntArray): ChatTurn {
        val next = messages + ChatMessage("user", user)
        val ids = encode(ChatMl.render(next, addGenerationPrompt = true, thinking = thinking))
        if (ids.size + 1 > contextLength) {
            throw ChatContextFullException(
                "context full: this turn needs ${ids.size} prompt tokens + 1 to answer, but the context holds " +
                    "$contextLength; start a new chat, send a shorter message, or re-export with a larger " +
                    "--max-seq-len",
            )
        }
        // At least one token is run, for the logits of the answer's first token.
        val keep = minOf(commonPrefix(cached, ids), ids.size - 1)
        cached = cached.copyOf(keep) // the cache past `keep` is rewritten from here on
        return ChatTurn(next, ids, keep)
    }

    /** Record the answer: `filled` positions of prompt + answer ids are in the cache (the last sampled may not be). */
    fun finish(turn: ChatTurn, answerIds: IntArray, answer: String, filled: Int) {
        messages = turn.messages + ChatMessage("assistant", answer)
        cached = (turn.promptIds + answerIds).copyOf(filled)
    }

    companion object {
        fun commonPrefix(a: IntArray, b: IntArray): Int {
            var n = 0
            while (n < a.size && n < b.size && a[n] == b[n]) n++
            return n
        }
    }
}
