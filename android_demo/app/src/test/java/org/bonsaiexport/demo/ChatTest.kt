package org.bonsaiexport.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ChatTest {
    // One id per character: the bookkeeping does not depend on the tokenizer.
    private val chars: (String) -> IntArray = { text -> IntArray(text.length) { text[it].code } }

    @Test
    fun rendersChatMlWithTheThinkingSwitch() {
        val user = listOf(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
        assertEquals(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" +
                "<think>\n\n</think>\n\n",
            ChatMl.render(user, thinking = false),
        )
        assertTrue(ChatMl.render(user, thinking = true).endsWith("<|im_start|>assistant\n"))
        assertEquals("Fine.", ChatMl.withoutThinking("<think>\nhm\n</think>\n\nFine."))
    }

    @Test
    fun aSecondTurnRunsOnlyItsOwnTokens() {
        val chat = Conversation("Be brief.")
        // thinking left on: with it off, Qwen3's format writes an empty think block in the prompt but not in the
        // history, so each turn rewinds to the answer's header
        val first = chat.prepare("Hi", thinking = null, contextLength = 1000, encode = chars)
        assertEquals(0, first.keep)
        val answer = chars("Hello.")
        // EOS sampled and not run: every answer token is in the cache
        chat.finish(first, answer, "Hello.", first.promptIds.size + answer.size)
        val cachedBefore = chat.cached.size
        val second = chat.prepare("More?", thinking = null, contextLength = 1000, encode = chars)
        assertEquals(cachedBefore, second.keep)
        assertArrayEquals(chars("<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n"),
            second.promptIds.copyOfRange(second.keep, second.promptIds.size))
    }

    @Test
    fun aRewrittenHistoryRewindsToWhereItParts() {
        val chat = Conversation()
        val first = chat.prepare("Hi", thinking = null, contextLength = 1000, encode = chars)
        val answer = "<think>\nhm\n</think>\n\nHello."
        chat.finish(first, chars(answer), answer, first.promptIds.size + answer.length)
        val second = chat.prepare("More?", thinking = null, contextLength = 1000, encode = chars)
        assertEquals(first.promptIds.size, second.keep) // the thinking is gone from the history
    }

    @Test
    fun aFullContextRefusesTheTurnAndKeepsTheConversation() {
        val chat = Conversation()
        val first = chat.prepare("Hi", thinking = null, contextLength = 60, encode = chars)
        chat.finish(first, chars("Yo"), "Yo", first.promptIds.size + 2)
        val messages = chat.messages
        val cached = chat.cached
        var refused: ChatContextFullException? = null
        try {
            chat.prepare("x".repeat(40), thinking = null, contextLength = 60, encode = chars)
        } catch (e: ChatContextFullException) {
            refused = e
        }
        assertTrue(refused?.message.orEmpty().contains("but the context holds 60"))
        assertEquals(messages, chat.messages)
        assertArrayEquals(cached, chat.cached)
        chat.newChat()
        assertEquals(0, chat.cached.size)
    }
}
