package org.bonsaiexport.demo

import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.FlowCollector
import kotlinx.coroutines.flow.flow
import java.util.Locale
import java.util.concurrent.atomic.AtomicBoolean

enum class StopReason { EOS, MAX_TOKENS, CONTEXT_FULL, STOPPED }

/**
 * Figures of one generation. Prefill: the prompt (BOS included) in one run; in a chat turn, only its tokens after
 * the prefix the cache already held. Time to first token: from the call (tokenization included) to the first sampled
 * token. Decode: the tokens after the first, over the time from the first to the last one, so one decode step = one
 * model run plus sampling.
 */
data class GenerationStats(
    val promptTokens: Int = 0,
    val generatedTokens: Int = 0,
    val prefillSeconds: Double = 0.0,
    val timeToFirstTokenSeconds: Double = 0.0,
    val decodeSeconds: Double = 0.0,
    val rssBytes: Long = 0,
    val peakRssBytes: Long = 0,
    val pssBytes: Long = 0,
    val stopReason: StopReason? = null,
) {
    val prefillTokensPerSecond: Double get() = if (prefillSeconds > 0) promptTokens / prefillSeconds else 0.0
    val decodeTokensPerSecond: Double
        get() = if (decodeSeconds > 0 && generatedTokens > 1) (generatedTokens - 1) / decodeSeconds else 0.0

    fun format(): String = buildString {
        append(String.format(Locale.ROOT, "prefill %d tok, %.1f tok/s | TTFT %.0f ms\n", promptTokens,
            prefillTokensPerSecond, timeToFirstTokenSeconds * 1000))
        append(String.format(Locale.ROOT, "decode %d tok, %.1f tok/s\n", generatedTokens, decodeTokensPerSecond))
        append("RSS ${Memory.mb(rssBytes)}")
        if (peakRssBytes > 0) append(" (peak ${Memory.mb(peakRssBytes)})")
        if (pssBytes > 0) append(" | PSS ${Memory.mb(pssBytes)}")
        stopReason?.let { append(" | stop: ${it.name.lowercase(Locale.ROOT)}") }
    }
}

sealed interface GenerationEvent {
    val text: String
    val stats: GenerationStats

    /** A piece of text (possibly empty while a multi-byte character is incomplete). */
    data class Text(override val text: String, override val stats: GenerationStats) : GenerationEvent

    /** The end: the last held-back text and the final figures (PSS included). */
    data class Finished(override val text: String, override val stats: GenerationStats) : GenerationEvent
}

/**
 * The generation loop: prefill the prompt in one run, then one token per run with the KV cache fed back, until a
 * stop id, the token budget, the end of the context or a stop request. The flows run model calls on the collecting
 * coroutine's dispatcher; apply flowOn() with the model's own thread.
 */
class Generator(private val model: OrtModel, private val tokenizer: Tokenizer) {
    /** Completion: `prompt` continued from an empty cache. */
    fun generate(prompt: String, settings: Settings, stop: AtomicBoolean): Flow<GenerationEvent> = flow {
        val start = System.nanoTime()
        val folder = model.folder
        // BOS (and any EOS) come from the tokenizer's post-processor, as the reference adds them.
        val promptIds = tokenizer.encode(prompt)
        if (promptIds.isEmpty()) throw IllegalArgumentException("the prompt gives no tokens; type some text")
        if (promptIds.size >= folder.maxSeqLen) {
            throw IllegalArgumentException(
                "the prompt is ${promptIds.size} tokens; the model's context is ${folder.maxSeqLen} (shorten it " +
                    "or re-export with a larger --max-seq-len)",
            )
        }
        model.reset()
        // After the prompt: the first generated word keeps its leading space.
        decode(promptIds, 0, folder.eosIds, settings, stop, start, tokenizer.streamDecoder(context = promptIds))
    }

    /**
     * One chat turn of `conversation` (ChatML): only the tokens after the prefix the cache already holds are run, at
     * the positions that follow; the answer ends at an EOS id or <|im_end|>. A turn the context cannot hold is
     * refused with ChatContextFullException, the conversation unchanged.
     */
    fun chat(conversation: Conversation, message: String, thinking: Boolean?, settings: Settings,
             stop: AtomicBoolean): Flow<GenerationEvent> = flow {
        val start = System.nanoTime()
        val turn = conversation.prepare(message, thinking, model.folder.maxSeqLen) {
            tokenizer.encode(it, addSpecialTokens = false)
        }
        val stops = model.folder.eosIds + listOfNotNull(ChatMl.stopId(tokenizer))
        val decoder = tokenizer.streamDecoder(context = turn.promptIds.takeLast(1).toIntArray())
        val answer = decode(turn.promptIds, turn.keep, stops, settings, stop, start, decoder)
        conversation.finish(turn, answer, tokenizer.decode(answer), model.length)
    }

    /** Runs promptIds[keep:] at position keep, then decodes; emits the text and the figures; returns the new ids. */
    private suspend fun FlowCollector<GenerationEvent>.decode(
        promptIds: IntArray, keep: Int, stops: Set<Int>, settings: Settings, stop: AtomicBoolean, start: Long,
        decoder: Tokenizer.StreamDecoder,
    ): IntArray {
        val room = model.folder.maxSeqLen - promptIds.size
        val budget = minOf(settings.maxNewTokens, room)
        val sampler = Sampler(settings.temperature, settings.topP)
        val prefillStart = System.nanoTime()
        val fed = LongArray(promptIds.size - keep) { promptIds[keep + it].toLong() }
        var logits = model.forward(fed, at = keep)
        var stats = GenerationStats(promptTokens = fed.size, prefillSeconds = seconds(prefillStart))
        val answer = ArrayList<Int>()
        var firstTokenAt = 0L
        var reason = StopReason.MAX_TOKENS
        while (true) {
            val token = sampler.sample(logits)
            val now = System.nanoTime()
            if (answer.isEmpty()) firstTokenAt = now
            stats = stats.copy(
                generatedTokens = answer.size + 1,
                timeToFirstTokenSeconds = (firstTokenAt - start) / 1e9,
                decodeSeconds = (now - firstTokenAt) / 1e9,
                rssBytes = Memory.rssBytes(),
            )
            if (token in stops) {
                reason = StopReason.EOS
                break
            }
            answer.add(token)
            emit(GenerationEvent.Text(decoder.push(token), stats))
            if (answer.size >= budget) {
                reason = if (budget < settings.maxNewTokens) StopReason.CONTEXT_FULL else StopReason.MAX_TOKENS
                break
            }
            if (stop.get()) {
                reason = StopReason.STOPPED
                break
            }
            logits = model.forward(longArrayOf(token.toLong()))
        }
        val finalStats = stats.copy(
            stopReason = reason, rssBytes = Memory.rssBytes(), peakRssBytes = Memory.peakRssBytes(),
            pssBytes = Memory.pssBytes(),
        )
        emit(GenerationEvent.Finished(decoder.flush(), finalStats))
        return answer.toIntArray()
    }

    private fun seconds(since: Long): Double = (System.nanoTime() - since) / 1e9
}
