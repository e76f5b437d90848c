package org.bonsaiexport.demo

import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.activity.viewModels
import androidx.appcompat.app.AlertDialog
import androidx.appcompat.app.AppCompatActivity
import androidx.core.view.ViewCompat
import androidx.core.view.WindowInsetsCompat
import androidx.core.widget.doAfterTextChanged
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import kotlinx.coroutines.launch

/** One screen: model folder, prompt, streamed output and figures. All state lives in MainViewModel. */
class MainActivity : AppCompatActivity() {
    private val viewModel: MainViewModel by viewModels()

    private val pickFolder = registerForActivityResult(ActivityResultContracts.OpenDocumentTree()) { uri ->
        if (uri != null) viewModel.importFolder(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val root = findViewById<android.view.View>(R.id.root)
        ViewCompat.setOnApplyWindowInsetsListener(root) { view, insets ->
            val bars = insets.getInsets(WindowInsetsCompat.Type.systemBars() or WindowInsetsCompat.Type.ime())
            view.setPadding(bars.left + PAD, bars.top + PAD, bars.right + PAD, bars.bottom + PAD)
            WindowInsetsCompat.CONSUMED
        }

        val modelPath = findViewById<EditText>(R.id.model_path)
        val choose = findViewById<Button>(R.id.choose)
        val importFolder = findViewById<Button>(R.id.import_folder)
        val load = findViewById<Button>(R.id.load)
        val modelStatus = findViewById<TextView>(R.id.model_status)
        val prompt = findViewById<EditText>(R.id.prompt)
        val generate = findViewById<Button>(R.id.generate)
        val stop = findViewById<Button>(R.id.stop)
        val settings = findViewById<Button>(R.id.settings)
        val stats = findViewById<TextView>(R.id.stats)
        val output = findViewById<TextView>(R.id.output)
        val outputScroll = findViewById<ScrollView>(R.id.output_scroll)

        modelPath.setText(viewModel.state.value.modelPath)
        modelPath.doAfterTextChanged { viewModel.setModelPath(it?.toString().orEmpty()) }
        choose.setOnClickListener {
            val folders = viewModel.candidateFolders()
            AlertDialog.Builder(this)
                .setTitle(R.string.choose_folder)
                .setItems(folders.map { it.absolutePath }.toTypedArray()) { _, which ->
                    modelPath.setText(folders[which].absolutePath)
                    viewModel.load()
                }
                .show()
        }
        importFolder.setOnClickListener { pickFolder.launch(null) }
        load.setOnClickListener { viewModel.load() }
        generate.setOnClickListener { viewModel.generate(prompt.text.toString()) }
        stop.setOnClickListener { viewModel.stop() }
        settings.setOnClickListener {
            SettingsDialog.show(this, viewModel.state.value.settings) { viewModel.updateSettings(it) }
        }

        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                viewModel.state.collect { s ->
                    if (modelPath.text.toString() != s.modelPath) modelPath.setText(s.modelPath)
                    modelStatus.text = s.modelStatus
                    val idle = !s.busy && !s.generating
                    choose.isEnabled = idle
                    importFolder.isEnabled = idle
                    load.isEnabled = idle
                    generate.isEnabled = idle && s.loaded
                    stop.isEnabled = s.generating
                    stats.text = s.stats
                    if (output.text.length != s.output.length) {
                        output.text = s.output
                        outputScroll.post { outputScroll.fullScroll(ScrollView.FOCUS_DOWN) }
                    }
                }
            }
        }
    }

    private companion object {
        const val PAD = 24
    }
}
