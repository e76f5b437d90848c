// The part of JUnit 4's API that the app's unit tests (android_demo/app/src/test) use, so that the same test
// files run on a plain JVM without the JUnit jar (tests/test_kotlin_jvm.py); Gradle compiles them against JUnit.
package org.junit

@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
annotation class Test

/** Thrown by Assume: the runner reports the test as skipped. */
class AssumptionViolatedException(message: String) : RuntimeException(message)

object Assert {
    @JvmStatic
    fun assertEquals(expected: Any?, actual: Any?) = assertEquals(null, expected, actual)

    @JvmStatic
    fun assertEquals(message: String?, expected: Any?, actual: Any?) {
        if (expected != actual) fail(prefix(message) + "expected:<$expected> but was:<$actual>")
    }

    @JvmStatic
    fun assertArrayEquals(expected: IntArray, actual: IntArray) = assertArrayEquals(null, expected, actual)

    @JvmStatic
    fun assertArrayEquals(message: String?, expected: IntArray, actual: IntArray) {
        if (!expected.contentEquals(actual)) {
            fail(prefix(message) + "expected:${expected.contentToString()} but was:${actual.contentToString()}")
        }
    }

    @JvmStatic
    fun assertTrue(condition: Boolean) = assertTrue(null, condition)

    @JvmStatic
    fun assertTrue(message: String?, condition: Boolean) {
        if (!condition) fail(message)
    }

    @JvmStatic
    fun assertFalse(condition: Boolean) = assertTrue(null, !condition)

    @JvmStatic
    fun <T : Throwable> assertThrows(expected: Class<T>, runnable: org.junit.function.ThrowingRunnable): T {
        try {
            runnable.run()
        } catch (e: Throwable) {
            if (expected.isInstance(e)) return expected.cast(e)
            throw AssertionError("expected ${expected.name}, got $e", e)
        }
        throw AssertionError("expected ${expected.name}, nothing was thrown")
    }

    @JvmStatic
    fun fail(message: String?) {
        throw AssertionError(message ?: "failed")
    }

    private fun prefix(message: String?): String = if (message == null) "" else "$message: "
}

object Assume {
    @JvmStatic
    fun assumeTrue(message: String, condition: Boolean) {
        if (!condition) throw AssumptionViolatedException(message)
    }
}
