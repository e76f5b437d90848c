package org.bonsaiexport.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import kotlin.random.Random

class SamplerTest {
    private val logits = floatArrayOf(0f, 3f, 1f, 2.9f)

    @Test
    fun zeroTemperatureIsArgmax() {
        assertEquals(1, Sampler(0f, 0.9f).sample(logits))
    }

    @Test
    fun smallTopPKeepsOnlyTheMostLikelyToken() {
        val sampler = Sampler(1f, 0.01f, Random(7))
        repeat(100) { assertEquals(1, sampler.sample(logits)) }
    }

    @Test
    fun topPKeepsTheNucleus() {
        // probabilities ~ 0.02, 0.48, 0.06, 0.43: top-p 0.9 keeps ids 1 and 3 only
        val sampler = Sampler(1f, 0.9f, Random(7))
        val seen = (0 until 500).map { sampler.sample(logits) }.toSet()
        assertEquals(setOf(1, 3), seen)
    }

    @Test
    fun fullDistributionReachesEveryToken() {
        val sampler = Sampler(2f, 1f, Random(7))
        val seen = (0 until 2000).map { sampler.sample(logits) }.toSet()
        assertTrue(seen.containsAll(listOf(0, 1, 2, 3)))
    }
}
