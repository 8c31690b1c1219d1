#[keel::service]
trait Echo {
    async fn echo(text: String) -> String;
}

fn main() {}
