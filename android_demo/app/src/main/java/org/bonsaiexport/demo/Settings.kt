package org.bonsaiexport.demo

import android.content.SharedPreferences
import java.io.File

/**
 * User settings. Threads matter most on a phone: ONNX Runtime's intra-op pool spread over the little cores can be
 * many times slower than the same work on the big cores alone, so the default is the number of big cores and the
 * pool's worker threads are pinned to them.
 */
data class Settings(
    val temperature: Float = 0f,
    val topP: Float = 0.9f,
    val maxNewTokens: Int = 128,
    val threads: Int = CpuCores.bigCores().size,
    val pinToBigCores: Boolean = true,
) {
    fun clamped(): Settings = copy(
        temperature = temperature.coerceIn(0f, 2f),
        topP = topP.coerceIn(0.01f, 1f),
        maxNewTokens = maxNewTokens.coerceIn(1, 4096),
        threads = threads.coerceIn(1, Runtime.getRuntime().availableProcessors()),
    )

    /** Whether a loaded model must be reloaded to apply `other` (thread settings live in the ORT session). */
    fun needsReload(other: Settings): Boolean = threads != other.threads || pinToBigCores != other.pinToBigCores

    fun save(prefs: SharedPreferences) {
        prefs.edit()
            .putFloat(KEY_TEMPERATURE, temperature)
            .putFloat(KEY_TOP_P, topP)
            .putInt(KEY_MAX_NEW_TOKENS, maxNewTokens)
            .putInt(KEY_THREADS, threads)
            .putBoolean(KEY_PIN, pinToBigCores)
            .apply()
    }

    companion object {
        private const val KEY_TEMPERATURE = "temperature"
        private const val KEY_TOP_P = "top_p"
        private const val KEY_MAX_NEW_TOKENS = "max_new_tokens"
        private const val KEY_THREADS = "threads"
        private const val KEY_PIN = "pin_to_big_cores"

        fun load(prefs: SharedPreferences): Settings {
            val d = Settings()
            return Settings(
                temperature = prefs.getFloat(KEY_TEMPERATURE, d.temperature),
                topP = prefs.getFloat(KEY_TOP_P, d.topP),
                maxNewTokens = prefs.getInt(KEY_MAX_NEW_TOKENS, d.maxNewTokens),
                threads = prefs.getInt(KEY_THREADS, d.threads),
                pinToBigCores = prefs.getBoolean(KEY_PIN, d.pinToBigCores),
            ).clamped()
        }
    }
}

/** The CPU's clusters, told apart by their maximum frequency (sysfs cpufreq). */
object CpuCores {
    /** Max frequency in kHz of each CPU, 0 where sysfs does not say. */
    fun maxFrequencies(): IntArray = IntArray(Runtime.getRuntime().availableProcessors()) { cpu ->
        File("/sys/devices/system/cpu/cpu$cpu/cpufreq/cpuinfo_max_freq").let { f ->
            runCatching { f.readText().trim().toInt() }.getOrDefault(0)
        }
    }

    /**
     * CPUs outside the slowest cluster (on a 4 little + 3 mid + 1 prime phone: the 4 mid and prime cores); all CPUs
     * when they share one frequency or sysfs is unreadable.
     */
    fun bigCores(frequencies: IntArray = maxFrequencies()): List<Int> {
        val slowest = frequencies.minOrNull() ?: return listOf(0)
        val big = frequencies.indices.filter { frequencies[it] > slowest }
        return big.ifEmpty { frequencies.indices.toList() }
    }

    /**
     * ONNX Runtime's "session.intra_op_thread_affinities" value pinning each worker thread of a pool of `threads` to
     * `cores`: one entry per worker (threads - 1: the calling thread is ORT's first thread and is not pinned),
     * entries separated by ';', processors numbered from 1. Null when there is nothing to pin.
     */
    fun affinityConfig(threads: Int, cores: List<Int>): String? {
        if (threads < 2 || cores.isEmpty()) return null
        val set = cores.joinToString(",") { (it + 1).toString() }
        return List(threads - 1) { set }.joinToString(";")
    }

    fun describe(): String {
        val freqs = maxFrequencies()
        val big = bigCores(freqs)
        val mhz = freqs.joinToString(" ") { if (it > 0) "${it / 1000}" else "?" }
        return "${freqs.size} CPUs, max MHz: $mhz; big cores: ${big.joinToString(",")}"
    }
}
