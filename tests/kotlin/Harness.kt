// Runs the app's Android-free Kotlin on a plain JVM for tests/test_kotlin_jvm.py: the tokenizer on the requested
// tokenizer.json files and strings, and the app's JUnit test classes (through the stand-in in junit/).
//
//   java -cp CLASSES:STDLIB:JSON org.bonsaiexport.demo.HarnessKt REQUEST.json   prints one JSON object
//
// REQUEST: {"cases": [{"tokenizer": PATH, "texts": [STR], "decode": [{"context": [ID], "ids": [ID]}]}],
//           "junit": [CLASS NAME]}
// Output:  {"cases": [{"error": MESSAGE} or {"load_ms", "encode_ms", "vocab_size", "ids": [[ID]],
//           "decoded": [STR], "streamed": [[STR]]}], "junit": [{"test", "status", "message"}]}
// "streamed" holds the deltas of streamDecoder(context) over ids, then its flush().
package org.bonsaiexport.demo

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import java.io.File
import java.lang.reflect.InvocationTargetException

fun main(args: Array<String>) {
    val request = Json.parseToJsonElement(File(args[0]).readText()).jsonObject
    val cases = request["cases"]?.jsonArray.orEmpty().map { runCase(it.jsonObject) }
    val junit = request["junit"]?.jsonArray.orEmpty().flatMap { runTestClass(it.jsonPrimitive.content) }
    println(JsonObject(mapOf("cases" to JsonArray(cases), "junit" to JsonArray(junit))))
}

private fun runCase(case: JsonObject): JsonElement {
    val started = System.nanoTime()
    val tokenizer = try {
        Tokenizer.load(File(case.getValue("tokenizer").jsonPrimitive.content))
    } catch (e: TokenizerFormatException) {
        return JsonObject(mapOf("error" to JsonPrimitive(e.message)))
    }
    val loadMs = (System.nanoTime() - started) / 1e6
    val texts = case["texts"]?.jsonArray.orEmpty().map { it.jsonPrimitive.content }
    val encodeStarted = System.nanoTime()
    val ids = texts.map { tokenizer.encode(it) }
    val encodeMs = (System.nanoTime() - encodeStarted) / 1e6
    val decodes = case["decode"]?.jsonArray.orEmpty().map { it.jsonObject }
    return JsonObject(
        mapOf(
            "load_ms" to JsonPrimitive(loadMs),
            "encode_ms" to JsonPrimitive(encodeMs),
            "vocab_size" to JsonPrimitive(tokenizer.vocabSize),
            "ids" to JsonArray(ids.map { row -> JsonArray(row.map { JsonPrimitive(it) }) }),
            "decoded" to strings(decodes.map { tokenizer.decode(intArray(it["ids"])) }),
            "streamed" to JsonArray(decodes.map { stream(tokenizer, intArray(it["context"]), intArray(it["ids"])) }),
        ),
    )
}

private fun stream(tokenizer: Tokenizer, context: IntArray, ids: IntArray): JsonElement {
    val decoder = tokenizer.streamDecoder(context)
    return strings(ids.map { decoder.push(it) } + decoder.flush())
}

private fun intArray(value: JsonElement?): IntArray =
    value?.jsonArray.orEmpty().map { it.jsonPrimitive.int }.toIntArray()

private fun strings(values: List<String>): JsonArray = JsonArray(values.map { JsonPrimitive(it) })

/** Each method annotated org.junit.Test of a class, run on a fresh instance as JUnit 4 does. */
private fun runTestClass(name: String): List<JsonElement> {
    val type = Class.forName(name)
    val methods = type.declaredMethods.filter { it.isAnnotationPresent(org.junit.Test::class.java) }
    require(methods.isNotEmpty()) { "$name has no @Test methods" }
    return methods.sortedBy { it.name }.map { method ->
        val (status, message) = try {
            method.invoke(type.getDeclaredConstructor().newInstance())
            Pair("passed", "")
        } catch (e: InvocationTargetException) {
            val cause = e.targetException
            Pair(if (cause is org.junit.AssumptionViolatedException) "skipped" else "failed", cause.toString())
        }
        JsonObject(
            mapOf(
                "test" to JsonPrimitive("${type.simpleName}.${method.name}"),
                "status" to JsonPrimitive(status),
                "message" to JsonPrimitive(message),
            ),
        )
    }
}
