// The tokenizer's pre-tokenizer alone, for tests/test_kotlin_jvm.py: the words Tokenizer.words() cuts each text into.
//
//   java -cp CLASSES:STDLIB:JSON org.bonsaiexport.demo.WordsHarnessKt REQUEST.json   prints one JSON object
//
// REQUEST: {"tokenizer": PATH, "texts": [STR]}
// Output:  {"words": [[STR]], "unassigned": [[FIRST, LAST]]} (the code points this JVM's Unicode data leaves out)
package org.bonsaiexport.demo

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import java.io.File

fun main(args: Array<String>) {
    val request = Json.parseToJsonElement(File(args[0]).readText()).jsonObject
    val tokenizer = Tokenizer.load(File(request.getValue("tokenizer").jsonPrimitive.content))
    val words = request.getValue("texts").jsonArray.map { text ->
        JsonArray(tokenizer.words(text.jsonPrimitive.content).map { JsonPrimitive(it) })
    }
    println(JsonObject(mapOf("words" to JsonArray(words), "unassigned" to unassigned())))
}

private fun unassigned(): JsonArray {
    val ranges = ArrayList<JsonArray>()
    var first = -1
    for (cp in 0..0x110000) {
        val missing = cp <= 0x10FFFF && Character.getType(cp) == Character.UNASSIGNED.toInt()
        if (missing && first < 0) first = cp
        if (!missing && first >= 0) {
            ranges.add(JsonArray(listOf(JsonPrimitive(first), JsonPrimitive(cp - 1))))
            first = -1
        }
    }
    return JsonArray(ranges)
}
