package org.bonsaiexport.demo

import android.content.ContentResolver
import android.net.Uri
import android.provider.DocumentsContract
import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.util.Locale
import org.bonsaiexport.demo.ArtifactKeys.Entry
import org.bonsaiexport.demo.ArtifactKeys.Folder
import org.bonsaiexport.demo.ArtifactKeys.Manifest
import org.bonsaiexport.demo.ArtifactKeys.Model

/** The graph's input and output names (optimum / onnxruntime-genai convention, as bonsai-export writes them). */
data class IoNames(
    val inputIds: String = "input_ids",
    val attentionMask: String = "attention_mask",
    val positionIds: String = "position_ids",
    val logits: String = "logits",
    val pastKey: String = "past_key_values.%d.key",
    val pastValue: String = "past_key_values.%d.value",
    val presentKey: String = "present.%d.key",
    val presentValue: String = "present.%d.value",
) {
    fun pastKey(layer: Int): String = String.format(Locale.ROOT, pastKey, layer)
    fun pastValue(layer: Int): String = String.format(Locale.ROOT, pastValue, layer)
    fun presentKey(layer: Int): String = String.format(Locale.ROOT, presentKey, layer)
    fun presentValue(layer: Int): String = String.format(Locale.ROOT, presentValue, layer)
}

/**
 * An ONNX artifact folder written by `bonsai-export export --format onnx`: model.onnx (+ model.onnx.data),
 * genai_config.json, tokenizer.json (the reference tokenizer pipeline, docs/TOKENIZER.md) and
 * bonsai_manifest.json, whose model entry gives the shapes. The keys are ArtifactKeys', generated from
 * bonsai_export/artifact.py.
 */
class ModelFolder private constructor(
    val dir: File,
    val modelFile: File,
    /** "custom" (bonsai::TernaryMatMul, needs libbonsai_ort_ops.so) or "stock" (com.microsoft MatMulNBits only). */
    val ternaryOp: String,
    val nLayers: Int,
    val nKvHeads: Int,
    val headDim: Int,
    val vocabSize: Int,
    val maxSeqLen: Int,
    val eosIds: Set<Int>,
    val io: IoNames,
) {
    val tokenizerFile: File get() = File(dir, TOKENIZER)
    val needsCustomOps: Boolean get() = ternaryOp != Folder.TERNARY_OP_STOCK

    fun describe(): String =
        "${dir.name}: $nLayers layers, $nKvHeads KV heads x $headDim, vocab $vocabSize, context $maxSeqLen, " +
            "ternary op $ternaryOp"

    companion object {
        const val MANIFEST = Folder.MANIFEST
        const val GENAI_CONFIG = Folder.GENAI_CONFIG
        const val TOKENIZER = "tokenizer.json"

        /** Files the app needs; an import copies only these (the folder may also hold a .pte and host libraries). */
        val NEEDED_FILES = setOf(MANIFEST, GENAI_CONFIG, TOKENIZER, Folder.ONNX_FILE, Folder.ONNX_DATA_FILE)

        fun open(dir: File): ModelFolder {
            val manifestFile = File(dir, MANIFEST)
            if (!manifestFile.isFile) {
                throw ModelFolderException(
                    "$dir: no $MANIFEST. Push an exported folder (adb push out/bonsai-onnx $dir) or import one; " +
                        "if it is there, make it readable: adb shell chmod -R a+rX $dir",
                )
            }
            val manifest = JSONObject(manifestFile.readText())
            val version = manifest.opt(Manifest.FORMAT_VERSION)
            if (manifest.optInt(Manifest.FORMAT_VERSION) != Folder.FORMAT_VERSION) {
                throw ModelFolderException(
                    "$manifestFile: format_version $version, this app reads ${Folder.FORMAT_VERSION}; re-export it",
                )
            }
            val artifacts = manifest.getJSONArray(Manifest.ARTIFACTS)
            val onnx = (0 until artifacts.length()).map { artifacts.getJSONObject(it) }
                .firstOrNull { it.optString(Entry.TYPE) == Folder.TYPE_ONNX }
                ?: throw ModelFolderException(
                    "$dir: no ONNX artifact in $MANIFEST; export with --format onnx (or --format all)",
                )
            val model = manifest.getJSONObject(Manifest.MODEL)
            val modelFile = File(dir, onnx.optString(Entry.FILE, Folder.ONNX_FILE))
            for (f in listOf(modelFile, File(dir, TOKENIZER))) {
                if (!f.isFile) throw ModelFolderException("$f: missing (the folder is incomplete)")
            }

            val genaiFile = File(dir, GENAI_CONFIG)
            // genai_config.json is onnxruntime-genai's format; its "model" section is not the manifest's
            val genai = if (genaiFile.isFile) JSONObject(genaiFile.readText()).getJSONObject(GENAI_MODEL) else null
            val eosIds = jsonInts(model.opt(Model.EOS_IDS)) + jsonInts(genai?.opt("eos_token_id"))
            val folder = ModelFolder(
                dir = dir,
                modelFile = modelFile,
                ternaryOp = onnx.optString(Entry.TERNARY_OP, Folder.TERNARY_OP_CUSTOM),
                nLayers = model.getInt(Model.N_LAYERS),
                nKvHeads = model.getInt(Model.N_KV_HEADS),
                headDim = model.getInt(Model.HEAD_DIM),
                vocabSize = model.getInt(Model.VOCAB_SIZE),
                maxSeqLen = model.getInt(Model.MAX_SEQ_LEN),
                eosIds = eosIds,
                io = ioNames(genai?.optJSONObject("decoder")),
            )
            genai?.optJSONObject("decoder")?.let { decoder ->
                val layers = decoder.optInt("num_hidden_layers", folder.nLayers)
                val kvHeads = decoder.optInt("num_key_value_heads", folder.nKvHeads)
                if (layers != folder.nLayers || kvHeads != folder.nKvHeads) {
                    throw ModelFolderException(
                        "$dir: $GENAI_CONFIG ($layers layers, $kvHeads KV heads) disagrees with $MANIFEST " +
                            "(${folder.nLayers}, ${folder.nKvHeads}); re-export the folder",
                    )
                }
            }
            if (eosIds.isEmpty()) throw ModelFolderException("$dir: no EOS id in $MANIFEST or $GENAI_CONFIG")
            return folder
        }

        /** The I/O names genai_config.json declares, defaulting to the exporter's names. */
        private fun ioNames(decoder: JSONObject?): IoNames {
            val d = IoNames()
            val inputs = decoder?.optJSONObject("inputs") ?: return d
            val outputs = decoder?.optJSONObject("outputs") ?: JSONObject()
            return IoNames(
                inputIds = inputs.optString("input_ids", d.inputIds),
                attentionMask = inputs.optString("attention_mask", d.attentionMask),
                positionIds = inputs.optString("position_ids", d.positionIds),
                logits = outputs.optString("logits", d.logits),
                pastKey = inputs.optString("past_key_names", d.pastKey),
                pastValue = inputs.optString("past_value_names", d.pastValue),
                presentKey = outputs.optString("present_key_names", d.presentKey),
                presentValue = outputs.optString("present_value_names", d.presentValue),
            )
        }

        private fun jsonInts(value: Any?): Set<Int> = when (value) {
            is Int -> setOf(value)
            is Number -> setOf(value.toInt())
            is JSONArray -> (0 until value.length()).map { value.getInt(it) }.toSet()
            else -> emptySet()
        }

        /**
         * Copies the needed files of a folder picked with the Storage Access Framework into `modelsDir/<name>`
         * and returns that folder. `progress` receives (file name, bytes copied so far, total bytes).
         */
        fun importTree(
            resolver: ContentResolver,
            treeUri: Uri,
            modelsDir: File,
            progress: (String, Long, Long) -> Unit,
        ): File {
            val treeId = DocumentsContract.getTreeDocumentId(treeUri)
            val children = DocumentsContract.buildChildDocumentsUriUsingTree(treeUri, treeId)
            val columns = arrayOf(
                DocumentsContract.Document.COLUMN_DOCUMENT_ID,
                DocumentsContract.Document.COLUMN_DISPLAY_NAME,
                DocumentsContract.Document.COLUMN_SIZE,
            )
            val files = ArrayList<Triple<Uri, String, Long>>()
            resolver.query(children, columns, null, null, null)?.use { c ->
                while (c.moveToNext()) {
                    val name = c.getString(1)
                    if (name in NEEDED_FILES) {
                        val uri = DocumentsContract.buildDocumentUriUsingTree(treeUri, c.getString(0))
                        files.add(Triple(uri, name, if (c.isNull(2)) 0L else c.getLong(2)))
                    }
                }
            }
            if (files.none { it.second == MANIFEST }) {
                throw ModelFolderException("the picked folder has no $MANIFEST; pick an exported ONNX folder")
            }
            val folderName = treeId.substringAfterLast('/').substringAfterLast(':').ifEmpty { "model" }
            val target = File(modelsDir, folderName)
            val partial = File(modelsDir, ".$folderName.partial")
            partial.deleteRecursively()
            partial.mkdirs()
            val total = files.sumOf { it.third }
            var done = 0L
            for ((uri, name, _) in files) {
                val input = resolver.openInputStream(uri) ?: throw ModelFolderException("cannot read $name")
                input.use { src ->
                    File(partial, name).outputStream().use { dst ->
                        val buffer = ByteArray(1 shl 20)
                        while (true) {
                            val n = src.read(buffer)
                            if (n < 0) break
                            dst.write(buffer, 0, n)
                            done += n
                            progress(name, done, total)
                        }
                    }
                }
            }
            target.deleteRecursively()
            if (!partial.renameTo(target)) throw ModelFolderException("cannot move the import into $target")
            return target
        }

        /** Folders worth offering: the adb push location and everything imported into app storage. */
        fun candidates(modelsDir: File): List<File> {
            val imported = modelsDir.listFiles { f -> f.isDirectory && !f.name.startsWith(".") }?.sorted().orEmpty()
            return listOf(File(DEFAULT_PUSH_DIR)) + imported
        }

        const val DEFAULT_PUSH_DIR = "/data/local/tmp/bonsai"
        private const val GENAI_MODEL = "model"
    }
}

class ModelFolderException(message: String) : Exception(message)
