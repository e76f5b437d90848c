package org.bonsaiexport.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxTensorLike
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import android.util.Log
import java.io.File
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * model.onnx in an ONNX Runtime session, with its KV cache. Each forward() appends tokens at the next positions:
 * the `present.{i}.*` outputs of one run are fed back as the next run's `past_key_values.{i}.*` (the tensors are
 * passed as they are, no copy). Not thread-safe: call it from one thread.
 */
class OrtModel private constructor(
    val folder: ModelFolder,
    private val env: OrtEnvironment,
    private val session: OrtSession,
    private val options: OrtSession.SessionOptions,
    /** How the custom-op library was handled, for the status line. */
    val customOps: String,
) : AutoCloseable {
    private val io = folder.io
    private val emptyCache: OnnxTensor = OnnxTensor.createTensor(
        env, FloatBuffer.allocate(0), longArrayOf(1, folder.nKvHeads.toLong(), 0, folder.headDim.toLong()),
    )
    private var cache: OrtSession.Result? = null

    /** Positions held by the cache (the next token's position). */
    var length = 0
        private set

    /** Forget the cache; the next forward() starts at position 0. */
    fun reset() {
        cache?.close()
        cache = null
        length = 0
    }

    /** Runs `tokens` at positions [length, length + tokens.size) and returns the logits of the last one. */
    fun forward(tokens: LongArray): FloatArray {
        val t = tokens.size
        val total = length + t
        require(t > 0) { "no tokens" }
        require(total <= folder.maxSeqLen) { "positions up to $total exceed the model's context ${folder.maxSeqLen}" }
        val created = ArrayList<OnnxTensor>(3)
        try {
            val feeds = HashMap<String, OnnxTensorLike>()
            fun input(name: String, values: LongArray, shape: LongArray) {
                val tensor = OnnxTensor.createTensor(env, LongBuffer.wrap(values), shape)
                created.add(tensor)
                feeds[name] = tensor
            }
            input(io.inputIds, tokens, longArrayOf(1, t.toLong()))
            input(io.attentionMask, LongArray(total) { 1L }, longArrayOf(1, total.toLong()))
            input(io.positionIds, LongArray(t) { (length + it).toLong() }, longArrayOf(1, t.toLong()))
            val past = cache
            for (i in 0 until folder.nLayers) {
                feeds[io.pastKey(i)] = past?.let { it.get(io.presentKey(i)).get() as OnnxTensor } ?: emptyCache
                feeds[io.pastValue(i)] = past?.let { it.get(io.presentValue(i)).get() as OnnxTensor } ?: emptyCache
            }
            val result = session.run(feeds)
            past?.close()
            cache = result
            length = total

            // Absolute reads: Buffer.position(int) has a covariant override only on newer Android releases.
            val logits = (result.get(io.logits).get() as OnnxTensor).floatBuffer
            val offset = (t - 1) * folder.vocabSize
            return FloatArray(folder.vocabSize) { logits.get(offset + it) }
        } finally {
            created.forEach { it.close() }
        }
    }

    override fun close() {
        reset()
        emptyCache.close()
        session.close()
        options.close()
    }

    companion object {
        private const val TAG = "OrtModel"
        const val OPS_LIBRARY = "libbonsai_ort_ops.so"

        /**
         * Opens the folder's model. Our custom-op library (built into the APK from custom_ops/) is registered when
         * the model is the custom variant; if it is missing or fails to load, the session is tried without it, which
         * works for the stock variant and otherwise fails with a message saying so.
         */
        fun load(folder: ModelFolder, settings: Settings, nativeLibraryDir: String): OrtModel {
            val env = OrtEnvironment.getEnvironment()
            val options = OrtSession.SessionOptions()
            try {
                options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
                options.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
                options.setIntraOpNumThreads(settings.threads)
                options.setInterOpNumThreads(1)
                if (settings.pinToBigCores) {
                    CpuCores.affinityConfig(settings.threads, CpuCores.bigCores())?.let {
                        options.addConfigEntry("session.intra_op_thread_affinities", it)
                    }
                }
                val customOps =
                    if (folder.needsCustomOps) registerOps(options, nativeLibraryDir) else "not needed (stock variant)"
                val session = try {
                    env.createSession(folder.modelFile.absolutePath, options)
                } catch (e: OrtException) {
                    val hint = if (folder.needsCustomOps && !customOps.startsWith("loaded")) {
                        " This is the custom-op variant and $OPS_LIBRARY is $customOps; re-export with " +
                            "--ternary-op stock to run on stock ONNX Runtime."
                    } else ""
                    throw ModelFolderException("ONNX Runtime cannot load ${folder.modelFile}: ${e.message}.$hint")
                }
                checkNames(session, folder)
                return OrtModel(folder, env, session, options, customOps)
            } catch (e: Exception) {
                options.close()
                throw e
            }
        }

        private fun registerOps(options: OrtSession.SessionOptions, nativeLibraryDir: String): String {
            val extracted = File(nativeLibraryDir, OPS_LIBRARY)
            // Extracted (useLegacyPackaging): a full path. Otherwise the bare name, which the dynamic linker
            // resolves inside the APK from the app's library namespace.
            val path = if (extracted.isFile) extracted.absolutePath else OPS_LIBRARY
            return try {
                options.registerCustomOpLibrary(path)
                "loaded"
            } catch (e: OrtException) {
                Log.w(TAG, "cannot register $path", e)
                "unavailable (${e.message})"
            }
        }

        private fun checkNames(session: OrtSession, folder: ModelFolder) {
            val io = folder.io
            val inputs = listOf(io.inputIds, io.attentionMask, io.positionIds) +
                (0 until folder.nLayers).flatMap { listOf(io.pastKey(it), io.pastValue(it)) }
            val outputs = listOf(io.logits) +
                (0 until folder.nLayers).flatMap { listOf(io.presentKey(it), io.presentValue(it)) }
            val missing = inputs.filterNot { it in session.inputNames } + outputs.filterNot { it in session.outputNames }
            if (missing.isNotEmpty()) {
                session.close()
                val names = missing.take(4).joinToString()
                throw ModelFolderException("${folder.modelFile}: lacks $names; not a bonsai-export graph")
            }
        }
    }
}
