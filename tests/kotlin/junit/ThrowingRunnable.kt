// JUnit 4.13's org.junit.function.ThrowingRunnable, for Assert.assertThrows (see Junit.kt).
package org.junit.function

fun interface ThrowingRunnable {
    fun run()
}
