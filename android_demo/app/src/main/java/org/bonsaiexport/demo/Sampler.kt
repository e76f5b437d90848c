package org.bonsaiexport.demo

import kotlin.math.exp
import kotlin.random.Random

/**
 * Next-token choice from one row of logits: greedy (argmax) when temperature is 0, else softmax(logits / temperature)
 * restricted to the smallest set of most likely tokens whose probability reaches topP (nucleus sampling).
 */
class Sampler(
    private val temperature: Float,
    private val topP: Float,
    private val random: Random = Random.Default,
) {
    fun sample(logits: FloatArray): Int {
        if (temperature <= 0f) return argmax(logits)
        var max = Float.NEGATIVE_INFINITY
        for (v in logits) if (v > max) max = v
        val probs = FloatArray(logits.size)
        var sum = 0.0
        for (i in logits.indices) {
            probs[i] = exp((logits[i] - max) / temperature)
            sum += probs[i]
        }
        if (topP >= 1f) return draw(probs, IntArray(probs.size) { it }, sum)

        // Sort (probability, id) pairs as longs: a non-negative float's bits order like its value.
        val keys = LongArray(probs.size) { (probs[it].toRawBits().toLong() shl 32) or it.toLong() }
        keys.sort()
        val kept = ArrayList<Int>()
        var mass = 0.0
        for (k in keys.indices.reversed()) {
            val id = (keys[k] and 0xFFFFFFFFL).toInt()
            kept.add(id)
            mass += probs[id]
            if (mass >= topP * sum) break
        }
        return draw(probs, kept.toIntArray(), mass)
    }

    private fun draw(probs: FloatArray, ids: IntArray, total: Double): Int {
        var r = random.nextDouble() * total
        for (id in ids) {
            r -= probs[id]
            if (r <= 0.0) return id
        }
        return ids.last()
    }

    companion object {
        fun argmax(logits: FloatArray): Int {
            var best = 0
            for (i in 1 until logits.size) if (logits[i] > logits[best]) best = i
            return best
        }
    }
}
