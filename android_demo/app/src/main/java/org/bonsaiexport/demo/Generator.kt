package org.bonsaiexport.demo

import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow
import java.util.Locale
import java.util.concurrent.atomic.AtomicBoolean

enum class StopReason { EOS, MAX_TOKENS, CONTEXT_FULL, STOPPED }

/**
 * Figures of one generation. Prefill: the prompt (BOS included) in one run. Time to first token: from the call
 * (tokenization included) to the first sampled token. Decode: the tokens after the first, over the time from the
 * first to the last one, so one decode step = one model run plus sampling.
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
 * The generation loop: prefill the prompt in one run, then one token per run with the KV cache fed back, until an
 * EOS id, the token budget, the end of the context or a stop request. The flow runs model calls on the collecting
 * coroutine's dispatcher; apply flowOn() with the model's own thread.
 */
class Generator(private val model: OrtModel, private val tokenizer: Tokenizer) {
    fun generate(prompt: String, settings: Settings, stop: AtomicBoolean): Flow<GenerationEvent> = flow {
        val start = System.nanoTime()
        val folder = model.folder
        // BOS (and any EOS) come from the tokenizer's post-processor, as the reference adds them.
        val promptIds = tokenizer.encode(prompt)
        if (promptIds.isEmpty()) throw IllegalArgumentException("the prompt gives no tokens; type some text")
        val prompted = LongArray(promptIds.size) { promptIds[it].toLong() }
        val room = folder.maxSeqLen - prompted.size
        if (room <= 0) {
            throw IllegalArgumentException(
                "the prompt is ${prompted.size} tokens; the model's context is ${folder.maxSeqLen} (shorten it " +
                    "or re-export with a larger --max-seq-len)",
            )
        }
        val budget = minOf(settings.maxNewTokens, room)
        val sampler = Sampler(settings.temperature, settings.topP)
        // After the prompt: the first generated word keeps its leading space.
        val decoder = tokenizer.streamDecoder(context = promptIds)

        model.reset()
        val prefillStart = System.nanoTime()
        var logits = model.forward(prompted)
        var stats = GenerationStats(promptTokens = prompted.size, prefillSeconds = seconds(prefillStart))
        var firstTokenAt = 0L
        var generated = 0
        var reason = StopReason.MAX_TOKENS
        while (true) {
            val token = sampler.sample(logits)
            val now = System.nanoTime()
            generated++
            if (generated == 1) firstTokenAt = now
            stats = stats.copy(
                generatedTokens = generated,
                timeToFirstTokenSeconds = (firstTokenAt - start) / 1e9,
                decodeSeconds = (now - firstTokenAt) / 1e9,
                rssBytes = Memory.rssBytes(),
            )
            if (token in folder.eosIds) {
                reason = StopReason.EOS
                break
            }
            emit(GenerationEvent.Text(decoder.push(token), stats))
            if (generated >= budget) {
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
    }

    private fun seconds(since: Long): Double = (System.nanoTime() - since) / 1e9
}
